"""The report's charts: loss against step and against training tokens, the learning rate and the
throughput, one colour per run when runs are compared. matplotlib (already a core dependency)
draws them as SVG text placed inline in the HTML, so the page needs no script, no plotting
library and no network to view.

Text stays text in the SVG (``svg.fonttype: none``: smaller, selectable, drawn in the page's
font), matplotlib escapes it as XML, and each chart gets its own id salt so the ids of two inline
SVGs never collide. The Agg/SVG canvas is used directly, not pyplot: no display, and a user's
process-wide matplotlib backend is left alone.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

from loraswitch.core.report.runs import Run

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


@dataclass
class Series:
    label: str
    x: list[float]
    y: list[float]
    color: str
    kind: Literal["line", "points"] = "line"  # points: evaluations, drawn as markers joined by a dashed line


def plain_text(label: str) -> str:
    """A label matplotlib draws as written: ``$`` would start mathtext, and a leading ``_`` hides
    the entry from the legend."""
    label = label.replace("$", r"\$")
    return " " + label if label.startswith("_") else label


def line_chart(
    title: str, xlabel: str, ylabel: str, series: list[Series], *, chart_id: str, from_zero: bool = False
) -> str:
    """One chart as an ``<svg>`` element (the XML prolog removed), or a note when there is nothing
    to draw. ``from_zero``: the y axis starts at 0 (rates; a constant one then reads as a level)."""
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    drawn = [s for s in series if s.x]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": chart_id, "font.size": 10}):
        fig = Figure(figsize=(6.4, 3.6), dpi=100)
        FigureCanvasSVG(fig)
        # Fixed margins, wide enough for the tick labels these charts have: a layout engine would
        # draw every chart twice to measure them.
        ax = fig.add_axes((0.13, 0.14, 0.84, 0.77))
        for s in drawn:
            if s.kind == "points":
                ax.plot(s.x, s.y, "o--", color=s.color, label=plain_text(s.label), markersize=4, linewidth=1)
            else:
                ax.plot(s.x, s.y, "-", color=s.color, label=plain_text(s.label), linewidth=1.2)
        ax.set_title(plain_text(title))
        ax.set_xlabel(plain_text(xlabel))
        ax.set_ylabel(plain_text(ylabel))
        ax.grid(alpha=0.3)
        if from_zero and drawn:
            ax.set_ylim(bottom=0, top=max(max(s.y) for s in drawn) * 1.08 or 1)
        if len(drawn) > 1:
            ax.legend(fontsize=8)
        elif not drawn:
            ax.text(0.5, 0.5, "no data in metrics.jsonl", ha="center", va="center", transform=ax.transAxes)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})  # no timestamp: the same runs give the same SVG
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def _series(run: Run, index: int, compared: bool, y_key: str, x_key: str = "step") -> list[Series]:
    """The train line (and, for the loss, the eval points) of one run."""
    color = COLORS[index % len(COLORS)]
    prefix = f"{run.label}: " if compared else ""
    steps = [s for s in run.steps if s.get(y_key) is not None and s.get(x_key) is not None]
    label = f"{prefix}train loss" if y_key == "loss" else run.label
    out = [Series(label, [s[x_key] for s in steps], [s[y_key] for s in steps], color)]
    if y_key == "loss":
        x_of = (lambda e: e["step"]) if x_key == "step" else (lambda e: run.tokens_at(e["step"]))
        evals = [(x_of(e), e["eval_loss"]) for e in run.evals if e.get("eval_loss") is not None]
        evals = [(x, y) for x, y in evals if x is not None]
        eval_color = color if compared else COLORS[1]
        out.append(
            Series(f"{prefix}eval loss", [x for x, _ in evals], [y for _, y in evals], eval_color, kind="points")
        )
    return out


def report_charts(runs: list[Run]) -> list[tuple[str, str]]:
    """(title, inline SVG) of every chart, in page order."""
    compared = len(runs) > 1
    specs = [
        ("Loss against optimizer step", "optimizer step", "loss (mean over target tokens)", "loss", "step", False),
        (
            "Loss against training tokens",
            "training tokens (prompt and answer, no padding)",
            "loss",
            "loss",
            "tokens",
            False,
        ),
        ("Learning rate", "optimizer step", "learning rate", "lr", "step", True),
        ("Throughput", "optimizer step", "tokens / s", "tokens_per_s", "step", True),
    ]
    charts = []
    for n, (title, xlabel, ylabel, y_key, x_key, from_zero) in enumerate(specs):
        series = [s for i, run in enumerate(runs) for s in _series(run, i, compared, y_key, x_key)]
        svg = line_chart(title, xlabel, ylabel, series, chart_id=f"chart{n}", from_zero=from_zero)
        charts.append((title, svg))
    return charts

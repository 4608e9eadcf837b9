"""Draws ``loss.png`` in the run directory when a run ends: training loss per step and the eval
loss points, read back from metrics.jsonl so a resumed run's plot covers the whole run."""

from __future__ import annotations

from pathlib import Path

from loraswitch.core import hookimpl
from loraswitch.plugins.metrics_file import read

FILENAME = "loss.png"


def plot_losses(run_dir: Path, out: Path | None = None, title: str | None = None) -> Path | None:
    """Write the plot; returns its path, or None when metrics.jsonl holds no loss to draw."""
    train: dict[int, float] = {}  # by step: a later line wins, should any step appear twice
    evals: dict[int, float] = {}
    for r in read(run_dir):
        if r.get("event") == "step" and r.get("loss") is not None:
            train[r["step"]] = r["loss"]
        elif r.get("event") == "eval" and r.get("eval_loss") is not None:
            evals[r["step"]] = r["eval_loss"]
    if not train and not evals:
        return None
    # The Agg canvas directly, not pyplot: no window, no display needed, and the process-wide
    # matplotlib backend of a user's notebook or script is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        steps = sorted(train)
        ax.plot(steps, [train[s] for s in steps], label="train loss", linewidth=1)
    if evals:
        steps = sorted(evals)
        ax.plot(steps, [evals[s] for s in steps], "o-", label="eval loss", markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean over target tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=10)
    out = Path(out) if out is not None else Path(run_dir) / FILENAME
    fig.savefig(out)
    return out


@hookimpl
def on_run_end(run, summary):
    plot_losses(run.run_dir, title=f"{run.backend}: {summary.get('stop_reason')} after {summary.get('steps')} steps")

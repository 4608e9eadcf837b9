"""The report page: the tables (summary, config, samples) worked out from the runs, rendered with
Jinja2 into one self-contained HTML document (``report.html.jinja`` beside this module).

Safety: the template environment escapes every value (``autoescape``), so a config value, a run
name or a sample answer holding markup shows as text. The only markup passed through unescaped is
matplotlib's SVG, whose text matplotlib has escaped itself. The page carries a Content Security
Policy that allows no script and no load from anywhere but the page itself (inline styles and
``data:`` images only): viewing it never touches the network, and should escaping ever fail,
the browser still refuses to run what was injected.
"""

from __future__ import annotations

import datetime
import json
import math
from importlib import resources
from typing import Any

from loraswitch.core import __version__
from loraswitch.core.report.charts import report_charts
from loraswitch.core.report.runs import Run

TEMPLATE = "report.html.jinja"
GOOD_STOPS = {"n_steps", "n_epochs", "stop_eval_loss"}


def show(value: Any) -> str:
    """A value as the tables print it: floats to 5 significant digits, null as a dash, lists and mappings as JSON."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.5g}" if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def stop_state(run: Run) -> tuple[str, str]:
    """(text, css class) of how the run ended."""
    if run.summary is None:
        return "not finished (no summary.json yet)", "warn"
    reason = str(run.summary.get("stop_reason"))
    return reason, "ok" if reason in GOOD_STOPS else "bad"


def summary_rows(runs: list[Run]) -> list[tuple[str, list[str]]]:
    """(what, one cell per run): the numbers a reader compares first."""

    def row(run: Run) -> dict[str, str]:
        s, c = run.summary or {}, run.config
        timings = s.get("timings") or {}
        last = run.steps[-1] if run.steps else {}
        return {
            "backend": show(c.get("backend")),
            "model": show(c.get("model")),
            "steps": f"{show(s.get('steps', last.get('step')))} of {show(c.get('n_steps'))}",
            "epochs": show(s.get("epochs", last.get("epoch"))),
            "final train loss": show(s.get("final_train_loss", last.get("loss"))),
            "final eval loss": show(s.get("final_eval_loss", run.evals[-1]["eval_loss"] if run.evals else None)),
            "training tokens": show(s.get("tokens", last.get("tokens"))),
            "tokens / s (training)": show(timings.get("tokens_per_s")),
            "training time": _seconds(timings.get("train_s")),
            "total time (with setup)": _seconds(timings.get("total_s")),
            "train / validation examples": f"{show(s.get('n_train'))} / {show(s.get('n_validation'))}",
            "adapter from step": show(s.get("adapter_step")),
        }

    rows = [row(run) for run in runs]
    return [(what, [r[what] for r in rows]) for what in rows[0]]


def config_rows(runs: list[Run], only_different: bool) -> list[tuple[str, list[str]]]:
    """(key, one value per run) over every key any run has, in the first run's order.
    ``output_dir`` never counts as a difference: it always is one."""
    keys = list(dict.fromkeys(k for run in runs for k in run.config))
    out = []
    for key in keys:
        values = [show(run.config.get(key)) for run in runs]
        if only_different and (key == "output_dir" or len(set(values)) == 1):
            continue
        out.append((key, values))
    return out


def sample_rows(run: Run) -> list[dict[str, str]]:
    """prompt, reference, before, after: the quickstart's answers of the same prompts, side by side."""
    samples = run.samples or {}
    before, after = samples.get("before") or [], samples.get("after") or []
    rows = []
    for i in range(max(len(before), len(after))):
        b = before[i] if i < len(before) else {}
        a = after[i] if i < len(after) else {}
        rows.append(
            {
                "prompt": str(b.get("prompt", a.get("prompt", ""))),
                "reference": str(b.get("reference", a.get("reference", ""))),
                "before": str(b.get("answer", "–")),
                "after": str(a.get("answer", "–")),
            }
        )
    return rows


def render(runs: list[Run]) -> str:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from markupsafe import Markup

    # Our own template, but sandboxed all the same: one rule for every template we render.
    env = ImmutableSandboxedEnvironment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    template = env.from_string(resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8"))
    return template.render(
        runs=runs,
        labels=[run.label for run in runs],
        stops=[stop_state(run) for run in runs],
        summary=summary_rows(runs),
        charts=[(title, Markup(svg)) for title, svg in report_charts(runs)],
        config_all=config_rows(runs, only_different=False),
        config_different=config_rows(runs, only_different=True) if len(runs) > 1 else None,
        samples=[(run, sample_rows(run)) for run in runs if run.samples],
        show=show,
        version=__version__,
        generated=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    )

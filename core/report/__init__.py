"""``loraswitch report``: one self-contained HTML file about one run, or several runs compared.

``runs.py`` reads run directories back (config.yaml, metrics.jsonl, summary.json, samples.json),
``charts.py`` draws the curves as inline SVG with matplotlib, ``page.py`` fills the HTML template
(``report.html.jinja``), escaping every value. Nothing here imports a training framework.
"""

from __future__ import annotations

from pathlib import Path

from loraswitch.core.files.atomic import atomic_write_text
from loraswitch.core.report.page import render
from loraswitch.core.report.runs import load_runs
from loraswitch.core.rundir import names


def default_output(run_dirs: list[str | Path]) -> Path:
    """RUN_DIR/report.html for one run; report.html in the working directory for a comparison."""
    return Path(run_dirs[0]) / names.REPORT if len(run_dirs) == 1 else Path(names.REPORT)


def write_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Read the runs, write the report atomically and return its path."""
    runs = load_runs(run_dirs)
    path = Path(out) if out is not None else default_output(run_dirs)
    atomic_write_text(path, render(runs))
    return path


__all__ = ["default_output", "write_report"]

"""Writes ``metrics.jsonl`` in the run directory: one JSON object a line, flushed as written,
so another tool can follow a run live and a killed run loses at most the line in flight.

Events: ``start`` (step, resumed, backend, total_steps), ``step`` and ``eval`` (the engine's
metrics dicts as they are), ``checkpoint`` (step, path relative to the run directory), ``end``
(step, stop_reason). Non-finite numbers are written as null: JSON has no NaN.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from loraswitch.core import hookimpl
from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import parse_json

FILENAME = "metrics.jsonl"


def append(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one line. Opening per line keeps this plugin stateless; a step is far slower."""
    line = json.dumps(_finite(record), default=_plain, allow_nan=False)
    with open(Path(run_dir) / FILENAME, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()


def read(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete line of metrics.jsonl; a torn last line (a killed run) is skipped."""
    path = Path(run_dir) / FILENAME
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = parse_json(line, str(path))
        except UserError:  # torn by a kill
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalars
        return _finite(value.item())
    return value


def _plain(value: Any) -> Any:
    """What json cannot encode by itself: paths and numpy arrays."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    raise TypeError(f"metrics value {value!r} of type {type(value).__name__} is not JSON-serialisable")


@hookimpl
def on_run_start(run):
    append(
        run.run_dir,
        {
            "event": "start",
            "step": run.start_step,
            "resumed": run.resumed,
            "backend": run.backend,
            "total_steps": run.total_steps,
        },
    )


@hookimpl
def on_step_end(run, metrics):
    append(run.run_dir, metrics)


@hookimpl
def on_eval(run, metrics):
    append(run.run_dir, metrics)


@hookimpl
def on_checkpoint(run, step, path):
    path = Path(path)
    try:
        shown = path.relative_to(run.run_dir).as_posix()
    except ValueError:
        shown = str(path)
    append(run.run_dir, {"event": "checkpoint", "step": step, "path": shown})


@hookimpl
def on_run_end(run, summary):
    append(run.run_dir, {"event": "end", "step": summary.get("steps"), "stop_reason": summary.get("stop_reason")})

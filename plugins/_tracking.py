"""What the three experiment-tracker plugins share: which tracker a run chose, the names the
metrics get in every tracker, the config flattened into hyperparameters, and ``trackers.json``,
the small file in the run directory that remembers each tracker's run id so that ``--resume``
continues the same tracker run.

The trackers log exactly what metrics.jsonl holds, under these names:

    step lines  loss -> train/loss, lr -> train/lr, tokens_per_s -> train/tokens_per_s,
                tokens -> train/tokens, epoch -> train/epoch
    eval lines  eval_loss -> eval/loss, eval_tokens -> eval/tokens
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.files.atomic import atomic_write_json
from loraswitch.core.plugins import check_trackers
from loraswitch.core.rundir import names
from loraswitch.core.training.stopping import StopReason

STEP_METRICS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "tokens_per_s": "train/tokens_per_s",
    "tokens": "train/tokens",
    "epoch": "train/epoch",
}
EVAL_METRICS = {"eval_loss": "eval/loss", "eval_tokens": "eval/tokens"}
# A run that ended this way did not fail; the others did (a non-finite loss) or were stopped.
FINISHED = {StopReason.N_STEPS, StopReason.N_EPOCHS, StopReason.STOP_EVAL_LOSS}


def chosen(run, tracker: str) -> bool:
    """True when the run's report_to names ``tracker``; then its package must import (one-line
    error with the install command otherwise; the engine has checked this already)."""
    if tracker not in run.config.report_to:
        return False
    check_trackers([tracker])
    return True


def tracked_values(metrics: dict[str, Any]) -> dict[str, float]:
    """The tracker names and values of one step or eval line; a missing or non-finite value is left out."""
    table = EVAL_METRICS if metrics.get("event") == "eval" else STEP_METRICS
    out = {}
    for key, name in table.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def hyperparameters(config_values: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """The resolved config as flat hyperparameters: numbers, strings and booleans stay, anything
    else (null, lists, the mesh mapping) becomes its JSON text, which every tracker can show."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in config_values.items():
        out[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    return out


def summary_values(summary: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """summary.json flattened (``timings.train_s``); nested mappings are walked, lists become JSON."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(summary_values(value, prefix=f"{name}."))
        elif value is not None:
            out[name] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    return out


def finished(summary: dict[str, Any]) -> bool:
    return summary.get("stop_reason") in FINISHED


# ---------------------------------------------------------------- trackers.json


def read_state(run_dir: Path) -> dict[str, Any]:
    """trackers.json as a mapping of tracker name -> what it saved ({} when there is none yet)."""
    path = Path(run_dir) / names.TRACKERS
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); delete it to start new tracker runs") from e
    if not isinstance(state, dict):
        raise UserError(f"{path}: must be a JSON object; delete it to start new tracker runs")
    return state


def save_state(run_dir: Path, tracker: str, entry: dict[str, Any]) -> None:
    """Record ``tracker``'s entry in trackers.json, atomically (observers run on rank 0 only, one at a time)."""
    state = read_state(run_dir)
    state[tracker] = entry
    atomic_write_json(Path(run_dir) / names.TRACKERS, state)

"""Logs a run to Weights & Biases when ``report_to`` names ``wandb`` (``pip install 'loraswitch[wandb]'``).

W&B's own settings apply: ``WANDB_MODE=offline`` keeps everything in RUN_DIR/wandb/ for a later
``wandb sync`` (no network needed), ``WANDB_PROJECT`` (default ``loraswitch``) and
``WANDB_ENTITY`` choose where it goes online. The W&B run is named after the run directory; its
config is the resolved config; every step and eval is logged at its optimizer step (names in
``plugins/_tracking.py``); the summary goes to the W&B run summary at the end. W&B's console
capture is off: it would wrap the progress bar's terminal.

Resume: the run id is kept in trackers.json and W&B is started with it (``resume="allow"``). A
step W&B already holds is not logged again: online, W&B reports the next step it expects;
offline, each process writes its own ``offline-run-*`` directory for the run id, so the earlier
ones are read back (``plugins/_wandb_log.py``) for the last step of each metric. Those stored
values are the first run's; resume is deterministic, so they equal the resumed run's except for
the wall-clock tokens/s.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from loraswitch.core import hookimpl
from loraswitch.core.errors import UserError
from loraswitch.core.rundir import names
from loraswitch.plugins import _wandb_log
from loraswitch.plugins._tracking import chosen, finished, read_state, save_state, summary_values, tracked_values

NAME = "wandb"
DEFAULT_PROJECT = "loraswitch"


@dataclass
class _Active:
    run: Any  # wandb.Run
    stored: dict[str, int] = field(default_factory=dict)  # metric -> last step W&B already holds
    expected: int = 0  # online resume: W&B ignores steps below this


_active: dict[int, _Active] = {}  # id(run) -> its W&B run


@hookimpl
def on_run_start(run):
    if not chosen(run, NAME):
        return
    import wandb

    saved = read_state(run.run_dir).get(NAME) or {}
    run_id = saved.get("run_id") if run.resumed else None
    earlier = _wandb_log.run_files(run.run_dir / names.WANDB, run_id) if run_id else []
    try:
        wb = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            name=run.run_dir.name,
            id=run_id,
            resume="allow" if run_id else None,
            dir=str(run.run_dir),
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=run.quiet),
        )
    except wandb.errors.Error as e:
        raise UserError(
            f"report_to wandb: {e}; run `wandb login`, or set WANDB_MODE=offline to keep the run in "
            f"{run.run_dir / names.WANDB} and `wandb sync` it later"
        ) from e
    wb.config.update(run.config.model_dump(), allow_val_change=True)  # n_steps may grow on resume
    save_state(run.run_dir, NAME, {"run_id": wb.id, "project": wb.project, "mode": wb.settings.mode})
    _active[id(run)] = _Active(wb, _stored_steps(earlier), wb.step if run_id else 0)


def _stored_steps(earlier) -> dict[str, int]:
    """The last step of each metric in the earlier run files; an unreadable file costs the
    de-duplication of the retrained steps, never the run."""
    try:
        return _wandb_log.last_steps(earlier)
    except Exception as e:  # a format this reader does not know, a damaged file
        print(f"wandb: cannot read the earlier run files ({e}); retrained steps may be logged twice", file=sys.stderr)
        return {}


def _log(run, metrics: dict[str, Any]) -> None:
    active = _active.get(id(run))
    if active is None:
        return
    step = int(metrics["step"])
    values = {k: v for k, v in tracked_values(metrics).items() if step > active.stored.get(k, -1)}
    if values and step >= active.expected:
        active.run.log(values, step=step)


@hookimpl
def on_step_end(run, metrics):
    _log(run, metrics)


@hookimpl
def on_eval(run, metrics):
    _log(run, metrics)


@hookimpl
def on_run_end(run, summary):
    active = _active.pop(id(run), None)
    if active is not None:
        active.run.summary.update(summary_values(summary))
        active.run.finish(exit_code=0 if finished(summary) else 1)

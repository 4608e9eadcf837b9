"""Logs a run to TensorBoard when ``report_to`` names ``tensorboard``
(``pip install 'loraswitch[tensorboard]'``).

Event files go to RUN_DIR/tensorboard/ (``tensorboard --logdir RUN_DIR/tensorboard``), written
with tensorboard's own ``EventFileWriter``, so neither TensorFlow nor torch is needed. Scalars:
the names in ``plugins/_tracking.py`` at each optimizer step (TensorBoard stores scalars as
float32); the resolved config as hyperparameters (the HParams tab) and as a text table; the
summary as text at the end.

Resume writes to the same directory. Each session begins with a ``SessionLog.START`` event, a
resumed one at the first step it trains again: that is TensorBoard's purge_step (what torch's
``SummaryWriter(purge_step=)`` writes), which drops every earlier event at or past that step, so
steps trained after the last checkpoint of the killed run are shown once, with the values of the
resumed run. Events are flushed after every step and eval, so what a checkpoint
covers is on disk before the next step starts.
"""

from __future__ import annotations

import time
from typing import Any

from loraswitch.core import hookimpl
from loraswitch.core.rundir import names
from loraswitch.plugins._tracking import chosen, hyperparameters, save_state, summary_values, tracked_values

NAME = "tensorboard"
_writers: dict[int, Any] = {}  # id(run) -> EventFileWriter, while that run is going


def _event(**fields):
    from tensorboard.compat.proto import event_pb2

    return event_pb2.Event(wall_time=time.time(), **fields)


def _scalars(values: dict[str, float], step: int):
    from tensorboard.compat.proto import summary_pb2

    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
    return _event(step=step, summary=summary)


def _text(tag: str, rows: dict[str, Any], step: int):
    """A two-column markdown table as a TensorBoard text summary (the Text tab renders markdown)."""
    from tensorboard.plugins.text.summary_v2 import text_pb

    lines = ["| key | value |", "| --- | --- |"] + [f"| {k} | {_cell(v)} |" for k, v in rows.items()]
    return _event(step=step, summary=text_pb(tag, "\n".join(lines)))


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


@hookimpl
def on_run_start(run):
    if not chosen(run, NAME):
        return
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams.summary_v2 import hparams_pb
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    log_dir = run.run_dir / names.TENSORBOARD
    earlier = any(log_dir.glob("events.out.tfevents.*"))
    writer = EventFileWriter(str(log_dir))
    # Every session starts with SessionLog.START; TensorBoard takes the first as the start and
    # each later one as a restart that purges what the earlier sessions logged at or past its step.
    start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
    writer.add_event(_event(step=run.start_step + 1 if run.resumed else 0, session_log=start))
    if not (run.resumed and earlier):
        params = hyperparameters(run.config.model_dump())
        writer.add_event(_event(step=0, summary=hparams_pb(params)))
        writer.add_event(_text("run/config", params, 0))
    writer.flush()
    save_state(run.run_dir, NAME, {"log_dir": names.TENSORBOARD})
    _writers[id(run)] = writer


def _log(run, metrics: dict[str, Any]) -> None:
    writer = _writers.get(id(run))
    values = tracked_values(metrics)
    if writer is not None and values:
        writer.add_event(_scalars(values, int(metrics["step"])))
        writer.flush()


@hookimpl
def on_step_end(run, metrics):
    _log(run, metrics)


@hookimpl
def on_eval(run, metrics):
    _log(run, metrics)


@hookimpl
def on_run_end(run, summary):
    writer = _writers.pop(id(run), None)
    if writer is not None:
        writer.add_event(_text("run/summary", summary_values(summary), int(summary.get("steps") or 0)))
        writer.close()

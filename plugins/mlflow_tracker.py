"""Logs a run to MLflow when ``report_to`` names ``mlflow`` (``pip install 'loraswitch[mlflow]'``:
mlflow-skinny plus SQLAlchemy and alembic for the local store).

Where: ``MLFLOW_TRACKING_URI`` when set (a server, a database, ``file:`` ...), else a SQLite
store inside the run directory, ``sqlite:///RUN_DIR/mlflow.db``, so a run needs no server and no
network (view it with full ``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db``). The
experiment is ``MLFLOW_EXPERIMENT_NAME`` or ``loraswitch``; the MLflow run is named after the run
directory. What: the resolved config as params, the metrics of every step and eval (names in
``plugins/_tracking.py``) written synchronously, so what a checkpoint covers is stored before the
next step, and at the end the summary as ``summary.*`` tags and the run status (FINISHED,
FAILED for a non-finite loss, KILLED when interrupted).

Resume: the run id is kept in trackers.json and the same MLflow run is continued. MLflow keeps
every value logged, so a step already stored (one trained after the last checkpoint of a killed
run, trained again now) is not logged twice: per metric, only steps past the last stored one are
sent. Those stored values are the first run's; resume is deterministic, so they equal the
resumed run's except for the wall-clock tokens/s.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from loraswitch.core import hookimpl
from loraswitch.core.rundir import names
from loraswitch.plugins._tracking import (
    EVAL_METRICS,
    STEP_METRICS,
    chosen,
    finished,
    hyperparameters,
    read_state,
    save_state,
    summary_values,
    tracked_values,
)

NAME = "mlflow"
DEFAULT_EXPERIMENT = "loraswitch"
MAX_TAG_CHARS = 5000  # MLflow refuses longer tag values


@dataclass
class _Active:
    client: Any
    run_id: str
    stored: dict[str, int] = field(default_factory=dict)  # metric -> last step already in the store


_active: dict[int, _Active] = {}  # id(run) -> the MLflow run it logs to


def tracking_uri(run_dir) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / names.MLFLOW_DB).resolve()}"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def _quiet_store_setup():
    """A new SQLite store announces its schema migrations at INFO; a training log does not need them."""
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@hookimpl
def on_run_start(run):
    if not chosen(run, NAME):
        return
    from mlflow import MlflowClient

    uri = tracking_uri(run.run_dir)
    with _quiet_store_setup():
        client = MlflowClient(tracking_uri=uri)
        saved = read_state(run.run_dir).get(NAME) or {}
        same_store = saved.get("tracking_uri") == uri
        if run.resumed and saved and not same_store:
            _say(f"mlflow: this run logged to {saved.get('tracking_uri')}, now to {uri}: starting a new MLflow run")
        active = _continue(client, run, saved) if run.resumed and same_store else None
        if active is None:
            active = _Active(client, _create(client, run))
            save_state(run.run_dir, NAME, {"tracking_uri": uri, "run_id": active.run_id})
    _active[id(run)] = active


def _continue(client, run, saved: dict[str, Any]) -> _Active | None:
    """The saved MLflow run, marked running again, with the last stored step of each metric."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(saved["run_id"])
    except (MlflowException, KeyError):
        _say(f"mlflow: run {saved.get('run_id')} is not in {saved.get('tracking_uri')}: starting a new MLflow run")
        return None
    run_id = saved["run_id"]
    client.update_run(run_id, status="RUNNING")
    stored = {}
    for metric in (*STEP_METRICS.values(), *EVAL_METRICS.values()):
        history = client.get_metric_history(run_id, metric)
        if history:
            stored[metric] = max(m.step for m in history)
    return _Active(client, run_id, stored)


def _create(client, run) -> str:
    from mlflow.entities import Param

    experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:  # artifacts (none are logged today) would go beside the run's own store, not into the working directory
        location = (run.run_dir / names.MLFLOW_ARTIFACTS).resolve().as_uri()
        uses_default_store = not os.environ.get("MLFLOW_TRACKING_URI")
        experiment_id = client.create_experiment(
            experiment_name, artifact_location=location if uses_default_store else None
        )
    tags = {"loraswitch.run_dir": str(run.run_dir.resolve()), "loraswitch.backend": run.backend}
    created = client.create_run(experiment_id, run_name=run.run_dir.name, tags=tags)
    params = [Param(k, str(v)) for k, v in hyperparameters(run.config.model_dump()).items()]
    client.log_batch(created.info.run_id, params=params)
    return created.info.run_id


def _log(run, metrics: dict[str, Any]) -> None:
    active = _active.get(id(run))
    if active is None:
        return
    from mlflow.entities import Metric

    step = int(metrics["step"])
    timestamp = int(time.time() * 1000)
    batch = [
        Metric(key, value, timestamp, step)
        for key, value in tracked_values(metrics).items()
        if step > active.stored.get(key, -1)
    ]
    if batch:
        active.client.log_batch(active.run_id, metrics=batch)


@hookimpl
def on_step_end(run, metrics):
    _log(run, metrics)


@hookimpl
def on_eval(run, metrics):
    _log(run, metrics)


@hookimpl
def on_run_end(run, summary):
    active = _active.pop(id(run), None)
    if active is None:
        return
    from mlflow.entities import RunTag

    tags = [RunTag(f"summary.{k}", str(v)[:MAX_TAG_CHARS]) for k, v in summary_values(summary).items()]
    active.client.log_batch(active.run_id, tags=tags)
    status = "FINISHED" if finished(summary) else "KILLED" if summary.get("stop_reason") == "interrupted" else "FAILED"
    active.client.set_terminated(active.run_id, status=status)

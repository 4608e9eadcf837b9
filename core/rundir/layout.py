"""The run directory, the contract other tools read (file names: names.py), written so that a
kill at any instant leaves it usable: every file is written to a temporary name in its
directory, fsynced and renamed over the old one (core/files/atomic.py). Checkpoints: checkpoints.py.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import yaml

from loraswitch.core.errors import UserError
from loraswitch.core.files.atomic import atomic_write_json, atomic_write_text
from loraswitch.core.files.config_text import load_yaml
from loraswitch.core.files.json_file import parse_json
from loraswitch.core.rundir import names
from loraswitch.core.rundir.names import ADAPTER, CHECKPOINTS, CONFIG, LOSS_PLOT, METRICS, MIN_FREE_BYTES, SUMMARY

# What --overwrite removes: every file a run or its trackers write (a new run must not resume into
# the old run's tracker ids, nor show the old samples in its report).
RUN_FILES = (
    *(CONFIG, METRICS, SUMMARY, ADAPTER, CHECKPOINTS, LOSS_PLOT),
    *(names.TRACKERS, names.TENSORBOARD, names.MLFLOW_DB, names.MLFLOW_ARTIFACTS, names.WANDB),
    *(names.SAMPLES, names.QUICKSTART, names.REPORT),
)


def is_run_dir_in_use(run_dir: Path) -> bool:
    """True when ``run_dir`` holds anything (a previous run, or someone else's files)."""
    return run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir()))


def check_new_run(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse to train into a directory that already holds files unless --overwrite is given."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output_dir: {run_dir} exists and is not a directory")
    if is_run_dir_in_use(run_dir) and not overwrite:
        raise UserError(
            f"output_dir: {run_dir} already holds a run; continue it with --resume {run_dir}, "
            "pass --overwrite to replace it, or choose another --output_dir"
        )


def check_writable(run_dir: Path, need_bytes: int = MIN_FREE_BYTES) -> None:
    """Fail before training, not at the first checkpoint: the nearest existing ancestor of
    ``run_dir`` must accept a new file and have ``need_bytes`` free."""
    probe_dir = run_dir
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise UserError(f"output_dir: {probe_dir} is not a directory")
    probe = probe_dir / f".loraswitch-write-test-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise UserError(
            f"output_dir: cannot write in {probe_dir} ({e.strerror}); choose a writable --output_dir"
        ) from e
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    free = shutil.disk_usage(probe_dir).free
    if free < need_bytes:
        raise UserError(
            f"output_dir: {probe_dir} has {free / 2**20:.0f} MiB free; this run needs at least "
            f"{need_bytes / 2**20:.0f} MiB for its checkpoints; free space or choose another --output_dir"
        )


def clear_run_dir(run_dir: Path) -> None:
    """--overwrite: remove the previous run's files (only ones loraswitch writes, and tmp leftovers)."""
    if not run_dir.exists():
        return
    for name in RUN_FILES:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    remove_leftovers(run_dir)


def remove_leftovers(run_dir: Path) -> None:
    """Delete the temporary files and directories a killed writer left in ``run_dir``
    (``.NAME.tmp-*`` from atomic writes and replace_dir, ``.NAME.old-*`` from replace_dir)."""
    for pattern in (".*.tmp-*", ".*.old-*"):
        for p in run_dir.glob(pattern):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def write_config(run_dir: Path, config_dict: dict[str, Any]) -> None:
    atomic_write_text(run_dir / CONFIG, yaml.safe_dump(config_dict, sort_keys=False))


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """config.yaml of an existing run (for --resume and ``evaluate RUN_DIR``)."""
    path = run_dir / CONFIG
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    if not path.is_file():
        raise UserError(f"{path}: missing; {run_dir} is not a loraswitch run directory")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid YAML (not UTF-8 text, byte {e.start})") from e
    data = load_yaml(text, str(path))
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a mapping of key: value")
    return data


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(run_dir / SUMMARY, summary)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume from checkpoint ``step``, drop the metrics lines of later steps (and a line
    torn by a kill): those steps are trained again and must not appear twice."""
    path = run_dir / METRICS
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            obj = parse_json(line, str(path))
        except UserError:  # a line torn by the kill (or edited beyond recognition) is dropped
            continue
        s = obj.get("step") if isinstance(obj, dict) else None
        if isinstance(obj, dict) and not (isinstance(s, (int, float)) and s > step):
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))

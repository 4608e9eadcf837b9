"""The run directory, the contract other tools read, written so that a kill at any instant
leaves it usable::

    config.yaml        the resolved config (what --resume reads)
    metrics.jsonl      one JSON object a line (written by the metrics_file plugin)
    summary.json       stop_reason, steps, epochs, losses, timings
    adapter/           the final adapter, PEFT format
    checkpoints/step-NNNNNN/{adapter/, backend_state/, trainer_state.json}

Every file is written to a temporary name in its directory, fsynced and renamed over the old
one. A checkpoint is built as ``checkpoints/.tmp-step-NNNNNN`` and renamed into place;
its trainer_state.json is written last and lists every file with its size and sha256, so a
checkpoint counts as complete only when that file parses and the files it lists are there.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

from . import kill_points
from .atomic import atomic_write_json, atomic_write_text, fsync_dir, fsync_tree, sha256_file
from .errors import UserError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
KEEP_CHECKPOINTS = 2
MIN_FREE_BYTES = 64 * 1024 * 1024
_PREFIX, _TMP_PREFIX = "step-", ".tmp-step-"


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:06d}"


# ---------------------------------------------------------------- atomic files


def replace_dir(target: Path, fill: Callable[[Path], None]) -> None:
    """Build a directory with ``fill(tmp)`` beside ``target`` and swap it in. The old copy is
    moved aside before the rename, so at every instant one complete version exists on disk."""
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        fill(tmp)
        fsync_tree(tmp)
        if target.exists():
            os.replace(target, old)
        kill_points.reached("replace", target.name)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- the run directory


def is_run_dir_in_use(run_dir: Path) -> bool:
    """True when ``run_dir`` holds anything (a previous run, or someone else's files)."""
    return run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir()))


def check_new_run(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse to train into a directory that already holds files unless --overwrite is given."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output_dir: {run_dir} exists and is not a directory")
    if is_run_dir_in_use(run_dir) and not overwrite:
        raise UserError(f"output_dir: {run_dir} already holds a run; continue it with --resume {run_dir}, "
                        "pass --overwrite to replace it, or choose another --output_dir")


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
        raise UserError(f"output_dir: cannot write in {probe_dir} ({e.strerror}); choose a writable --output_dir") from e
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    free = shutil.disk_usage(probe_dir).free
    if free < need_bytes:
        raise UserError(f"output_dir: {probe_dir} has {free / 2**20:.0f} MiB free; this run needs at least "
                        f"{need_bytes / 2**20:.0f} MiB for its checkpoints; free space or choose another --output_dir")


def clear_run_dir(run_dir: Path) -> None:
    """--overwrite: remove the previous run's files (only ones loraswitch writes, and tmp leftovers)."""
    if not run_dir.exists():
        return
    for name in (CONFIG, METRICS, SUMMARY, ADAPTER, CHECKPOINTS, "loss.png"):
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
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML ({e})") from e
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
            obj = json.loads(line)
        except ValueError:
            continue
        s = obj.get("step") if isinstance(obj, dict) else None
        if isinstance(obj, dict) and not (isinstance(s, (int, float)) and s > step):
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# ---------------------------------------------------------------- checkpoints


def write_checkpoint(run_dir: Path, step: int, fill: Callable[[Path], None], trainer_state: dict[str, Any]) -> Path:
    """Write ``checkpoints/step-NNNNNN`` atomically: ``fill(tmp)`` writes adapter/ and
    backend_state/, then trainer_state.json (with the file list) is written last, the tree is
    fsynced and renamed into place. Returns the final path."""
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f"{_TMP_PREFIX}{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a killed writer
    tmp.mkdir()
    fill(tmp)
    files = {}
    for p in sorted(tmp.rglob("*")):
        if p.is_file():
            files[p.relative_to(tmp).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    state = dict(trainer_state, files=files)
    fsync_tree(tmp)
    kill_points.reached("checkpoint", step, "files")
    with open(tmp / TRAINER_STATE, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    if final.exists():  # rewriting a step (resumed at the end): swap, never leave a gap
        old = root / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(root)
    kill_points.reached("checkpoint", step, "complete")
    return final


def read_trainer_state(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's trainer state if the checkpoint is complete, else None."""
    return _check_complete(checkpoint)[0]


def _check_complete(checkpoint: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(trainer state, None) for a complete checkpoint, else (None, why not, naming the file)."""
    path = checkpoint / TRAINER_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{path}: missing"
    except (OSError, ValueError) as e:
        return None, f"{path}: not valid JSON ({e})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or not isinstance(state.get("files"), dict):
        return None, f"{path}: needs an integer 'step' and a 'files' table"
    if state["step"] != _step_of(checkpoint):
        return None, f"{path}: step = {state['step']!r}, but the directory is {checkpoint.name}"
    for name, info in state["files"].items():
        try:
            size = (checkpoint / name).stat().st_size
        except OSError:
            return None, f"{checkpoint / name}: missing, though {TRAINER_STATE} lists it"
        if not isinstance(info, dict) or size != info.get("size"):
            listed = info.get("size") if isinstance(info, dict) else info
            return None, f"{checkpoint / name}: {size} bytes, but {TRAINER_STATE} lists {listed!r} bytes"
    return state, None


def _step_of(checkpoint: Path) -> int | None:
    try:
        return int(checkpoint.name[len(_PREFIX):]) if checkpoint.name.startswith(_PREFIX) else None
    except ValueError:
        return None


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first; tmp and partial ones are skipped."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        step = _step_of(p)
        if step is not None and p.is_dir() and read_trainer_state(p) is not None:
            out.append((step, p))
    return sorted(out)


def latest_complete_checkpoint(run_dir: str | Path) -> Path | None:
    found = complete_checkpoints(Path(run_dir))
    return found[-1][1] if found else None


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint --resume continues from: the latest complete one. A newer step directory
    that holds a trainer_state.json but is not complete was damaged after it was written (a
    killed writer leaves only a .tmp- directory, since a checkpoint is renamed into place once
    complete); silently falling back would discard steps, or the whole run, so it is an error."""
    latest = latest_complete_checkpoint(run_dir)
    newest = _step_of(latest) if latest is not None else -1
    root = run_dir / CHECKPOINTS
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        step = _step_of(p)
        if step is not None and step > newest and (p / TRAINER_STATE).exists():
            problem = _check_complete(p)[1]
            raise UserError(f"{problem}; checkpoint {p} is damaged (delete it to resume from "
                            f"{latest.name if latest else 'the start'})")
    return latest


def verify_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """Check every file's sha256 against trainer_state.json before resuming from it; a damaged
    file is named, with the way out (delete the checkpoint to fall back to the previous one)."""
    state = read_trainer_state(checkpoint)
    if state is None:
        raise UserError(f"{checkpoint / TRAINER_STATE}: checkpoint is incomplete or its trainer state is not valid JSON")
    for name, info in state["files"].items():
        if sha256_file(checkpoint / name) != info.get("sha256"):
            raise UserError(f"{checkpoint / name}: checksum differs from {TRAINER_STATE}; the checkpoint is damaged "
                            f"(delete {checkpoint} to resume from the previous one)")
    return state


def prune_checkpoints(run_dir: Path, keep: int = KEEP_CHECKPOINTS) -> None:
    """Keep the newest ``keep`` complete checkpoints; remove older ones and stale tmp dirs.
    Called only after a new checkpoint is complete, so the one a run resumed from is removed
    only once ``keep`` newer complete ones exist."""
    root = run_dir / CHECKPOINTS
    complete = complete_checkpoints(run_dir)
    for _, path in complete[:-keep] if keep > 0 else []:
        # Renamed out of view first: a kill during rmtree must not leave a step dir half deleted.
        old = root / f".old-{path.name}-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
        shutil.rmtree(old, ignore_errors=True)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((_TMP_PREFIX, ".old-")):
                shutil.rmtree(p, ignore_errors=True)
    fsync_dir(root)

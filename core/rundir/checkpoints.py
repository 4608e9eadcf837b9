"""Checkpoints: ``checkpoints/step-NNNNNN/{adapter/, backend_state/, trainer_state.json}``.

A checkpoint is built as ``checkpoints/.tmp-step-NNNNNN`` and renamed into place; its
trainer_state.json is written last and lists every file with its size and sha256, so a
checkpoint counts as complete only when that file parses and the files it lists are there.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.files.atomic import fsync_dir, fsync_tree, sha256_file
from loraswitch.core.rundir.names import (
    CHECKPOINT_PREFIX,
    CHECKPOINT_TMP_PREFIX,
    CHECKPOINTS,
    KEEP_CHECKPOINTS,
    TRAINER_STATE,
    checkpoint_name,
)
from loraswitch.core.training import kill_points


def write_checkpoint(run_dir: Path, step: int, fill: Callable[[Path], None], trainer_state: dict[str, Any]) -> Path:
    """Write ``checkpoints/step-NNNNNN`` atomically: ``fill(tmp)`` writes adapter/ and
    backend_state/, then trainer_state.json (with the file list) is written last, the tree is
    fsynced and renamed into place. Returns the final path."""
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f"{CHECKPOINT_TMP_PREFIX}{step:06d}"
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
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("step"), int)
        or not isinstance(state.get("files"), dict)
    ):
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
        return int(checkpoint.name[len(CHECKPOINT_PREFIX) :]) if checkpoint.name.startswith(CHECKPOINT_PREFIX) else None
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
    latest_step = _step_of(latest) if latest is not None else None
    newest = -1 if latest_step is None else latest_step
    root = run_dir / CHECKPOINTS
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        step = _step_of(p)
        if step is not None and step > newest and (p / TRAINER_STATE).exists():
            problem = _check_complete(p)[1]
            raise UserError(
                f"{problem}; checkpoint {p} is damaged (delete it to resume from "
                f"{latest.name if latest else 'the start'})"
            )
    return latest


def verify_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """Check every file's sha256 against trainer_state.json before resuming from it; a damaged
    file is named, with the way out (delete the checkpoint to fall back to the previous one)."""
    state = read_trainer_state(checkpoint)
    if state is None:
        raise UserError(
            f"{checkpoint / TRAINER_STATE}: checkpoint is incomplete or its trainer state is not valid JSON"
        )
    for name, info in state["files"].items():
        if sha256_file(checkpoint / name) != info.get("sha256"):
            raise UserError(
                f"{checkpoint / name}: checksum differs from {TRAINER_STATE}; the checkpoint is damaged "
                f"(delete {checkpoint} to resume from the previous one)"
            )
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
            if p.name.startswith((CHECKPOINT_TMP_PREFIX, ".old-")):
                shutil.rmtree(p, ignore_errors=True)
    fsync_dir(root)

"""Checkpoints: ``checkpoints/step-NNNNNN/{adapter/, backend_state/, trainer_state.json}``.

A checkpoint is built as ``checkpoints/.tmp-step-NNNNNN`` and renamed into place; its
trainer_state.json is written last and lists every file with its size and sha256, so a
checkpoint counts as complete only when that file parses and the files it lists are there.
A ``step-NNNNNN`` directory is therefore complete or damaged, never "in progress": resume
refuses a damaged newest checkpoint unless told which older one to use (``--resume_from``).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.files.atomic import fsync_dir, fsync_tree, sha256_file
from loraswitch.core.files.json_file import MAX_JSON_FILE_BYTES, parse_json
from loraswitch.core.files.paths import read_bounded
from loraswitch.core.rundir.names import (
    CHECKPOINT_PREFIX,
    CHECKPOINT_TMP_PREFIX,
    CHECKPOINTS,
    KEEP_CHECKPOINTS,
    SET_ASIDE_PREFIX,
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
    """(trainer state, None) when the manifest parses and every file it lists is there with its
    listed size; else (None, why not, naming the file). Sizes only: cheap enough to run on every
    checkpoint after each save; ``verify_checkpoint`` adds the sha256 of every file."""
    path = checkpoint / TRAINER_STATE
    if not checkpoint.is_dir():
        return None, f"{checkpoint}: not a directory"
    try:
        state = parse_json(read_bounded(path, MAX_JSON_FILE_BYTES, missing="missing"), str(path))
    except UserError as e:
        return None, str(e)
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("step"), int)
        or not isinstance(state.get("files"), dict)
    ):
        return None, f"{path}: needs an integer 'step' and a 'files' table"
    if state["step"] != _step_of(checkpoint):
        return None, f"{path}: step = {state['step']!r}, but the directory is {checkpoint.name}"
    for name, info in state["files"].items():
        listed = info.get("size") if isinstance(info, dict) else info
        if not _is_relative_file_name(name):
            return None, f"{path}: lists {name!r}, which is not a file inside the checkpoint"
        file = checkpoint / name
        try:
            size = file.stat().st_size if file.is_file() else None
        except OSError:
            size = None
        if size is None:
            return None, f"{file}: missing, though {TRAINER_STATE} lists it"
        if size != listed:
            return None, f"{file}: {size} bytes, but {TRAINER_STATE} lists {listed!r} bytes"
    return state, None


def _is_relative_file_name(name: str) -> bool:
    """A manifest entry names a file below the checkpoint: an edited "../../x" is never read."""
    p = PurePosixPath(name)
    return bool(name) and "\0" not in name and not p.is_absolute() and ".." not in p.parts


def _step_of(checkpoint: Path) -> int | None:
    name = checkpoint.name
    digits = name[len(CHECKPOINT_PREFIX) :]
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() and digits.isascii() else None


def checkpoint_entries(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``step-NNNNNN`` entry of ``checkpoints/``, complete or not, oldest
    first (``.tmp-`` directories of a killed writer are not among them)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((step, p) for p in root.iterdir() if (step := _step_of(p)) is not None)


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first; tmp and partial ones are skipped."""
    return [(step, p) for step, p in checkpoint_entries(run_dir) if read_trainer_state(p) is not None]


def latest_complete_checkpoint(run_dir: str | Path) -> Path | None:
    found = complete_checkpoints(Path(run_dir))
    return found[-1][1] if found else None


def verify_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint that is complete and whose every file has the sha256
    its manifest lists; else a UserError naming the file."""
    state, problem = _check_complete(checkpoint)
    if state is None:
        raise UserError(f"{problem}; checkpoint {checkpoint} is damaged")
    for name, info in state["files"].items():
        if sha256_file(checkpoint / name) != info.get("sha256"):
            raise UserError(
                f"{checkpoint / name}: checksum differs from {TRAINER_STATE}; checkpoint {checkpoint} is damaged"
            )
    return state


@dataclass(frozen=True)
class Resume:
    """What ``--resume`` continues from: a verified checkpoint (None: the start) and the newer
    checkpoint directories that ``--resume_from`` asked to pass over."""

    checkpoint: Path | None
    state: dict[str, Any] | None
    passed_over: tuple[Path, ...] = ()


def resume_checkpoint(run_dir: Path, resume_from: str | None = None) -> Resume:
    """The checkpoint ``--resume`` continues from: the newest ``step-NNNNNN`` directory, which
    must be complete and verify (every listed file present, sizes and sha256 as listed).

    A killed writer leaves only a ``.tmp-step-*`` directory (a checkpoint is renamed into place
    once complete), so a newest checkpoint that does not verify was damaged after it was written.
    Falling back to an older one silently would throw steps away, so it is an error naming the
    damaged file; ``resume_from`` (``--resume_from step-NNNNNN``) is the deliberate way back."""
    entries = checkpoint_entries(run_dir)
    if resume_from is not None:
        return _resume_from(run_dir, entries, resume_from)
    if not entries:
        return Resume(None, None)
    newest = entries[-1][1]
    try:
        return Resume(newest, verify_checkpoint(newest))
    except UserError as e:
        older = [p for _, p in entries[:-1] if read_trainer_state(p) is not None]
        way_out = (
            f"to resume from the newest complete one instead, add --resume_from {older[-1].name}"
            if older
            else "no older checkpoint is complete; start the run again with --overwrite"
        )
        raise UserError(f"{e}; {way_out}") from None


def _resume_from(run_dir: Path, entries: list[tuple[int, Path]], name: str) -> Resume:
    wanted = _step_of(Path(name)) if not name.isdigit() else int(name)
    chosen = next((p for step, p in entries if step == wanted), None)
    if chosen is None:
        complete = ", ".join(p.name for _, p in entries if read_trainer_state(p) is not None) or "none"
        raise UserError(
            f"--resume_from {name}: no such checkpoint in {run_dir / CHECKPOINTS} (complete ones: {complete})"
        )
    state = verify_checkpoint(chosen)
    return Resume(chosen, state, tuple(p for step, p in entries if step > state["step"]))


def set_aside(passed_over: tuple[Path, ...]) -> list[Path]:
    """Rename checkpoints that ``--resume_from`` passed over to ``checkpoints/set-aside-step-NNNNNN``:
    out of the way of the resumed run (which writes those steps again), but not deleted, since
    the user may still want to look at them. Returns the new paths."""
    moved = []
    for path in passed_over:
        target = path.with_name(f"{SET_ASIDE_PREFIX}{path.name}")
        if target.exists():
            target = path.with_name(f"{SET_ASIDE_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
        os.replace(path, target)
        moved.append(target)
    if passed_over:
        fsync_dir(passed_over[0].parent)
    return moved


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

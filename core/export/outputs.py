"""Outputs written under a temporary name beside the target and renamed into place at the end.

A merge or export that fails (bad input found late, a full disk, an interrupt) leaves nothing
behind: the temporary file or directory is removed, and an existing target is untouched unless
the new output is complete. An existing target is refused unless ``overwrite`` is given, before
any work starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from loraswitch.core.errors import UserError
from loraswitch.core.files.atomic import fsync_dir, replace_dir


def check_target(target: Path, *, overwrite: bool, kind: str) -> None:
    """Refuse an existing target (without ``overwrite``) or one of the wrong kind, before any work."""
    if not target.parent.is_dir():
        raise UserError(f"--out: {target.parent} is not a directory")
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise UserError(f"--out: {target} exists; give --overwrite to replace it")
        if kind == "directory" and not target.is_dir():
            raise UserError(f"--out: {target} exists and is not a directory")
        if kind == "file" and target.is_dir():
            raise UserError(f"--out: {target} is a directory; give a file name such as {target / 'model.gguf'}")


def _as_user_error(e: OSError, target: Path) -> UserError:
    reason = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or type(e).__name__)
    return UserError(f"--out: cannot write {target} ({reason}); nothing was written")


def write_directory(target: Path, fill: Callable[[Path], None]) -> None:
    """Build a directory with ``fill(tmp)`` beside ``target``, then swap it in."""
    try:
        replace_dir(target, fill)
    except OSError as e:
        raise _as_user_error(e, target) from e


@contextlib.contextmanager
def staged_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it to ``target`` if the block succeeds."""
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as e:
        raise _as_user_error(e, target) from e
    finally:
        if tmp.exists():
            tmp.unlink()

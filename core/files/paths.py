"""Paths the user gives (data files, config files, model directories), checked before use.

``open()`` on a FIFO blocks until a writer appears, a character device never ends, and
``Path.resolve()`` on a symlink loop raises RuntimeError: each is a hang or a traceback instead
of a one-line error. These helpers stat the path first (following symlinks, as open would) and
name what is there when it is not what the caller needs.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from loraswitch.core.errors import UserError


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a regular file" if stat.S_ISREG(mode) else "not a file"


def _stat(path: Path, missing: str) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise UserError(f"{path}: a symlink to {os.readlink(path)!r}, which does not exist") from None
        raise UserError(f"{path}: {missing}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"{path}: symlink loop") from None
        raise UserError(f"{path}: cannot be read ({e.strerror})") from None


def regular_file(path: str | Path, *, what: str = "file", missing: str | None = None) -> Path:
    """``path`` (user-expanded) if it is, or links to, a regular file; anything else (missing, a
    symlink loop, a directory, a FIFO, a device) is a UserError naming it."""
    p = Path(path).expanduser()
    st = _stat(p, missing or f"{what} not found")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{p}: {what} is {_kind(st.st_mode)}, not a regular file")
    return p


def directory(path: str | Path, *, what: str = "directory", missing: str | None = None) -> Path:
    """``path`` (user-expanded) if it is, or links to, a directory, else a UserError naming it."""
    p = Path(path).expanduser()
    st = _stat(p, missing or f"{what} not found")
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{p}: {what} is {_kind(st.st_mode)}, not a directory")
    return p


def resolved(path: str | Path) -> Path:
    """The absolute, symlink-free form of a path that exists (``regular_file``/``directory``
    checked it), or of one that does not; a loop is a UserError, not RuntimeError."""
    p = Path(path).expanduser()
    try:
        return p.resolve()
    except (RuntimeError, OSError) as e:  # RuntimeError: Python 3.11-3.12 report a loop so
        raise UserError(f"{p}: cannot resolve the path ({e})") from None


def read_bounded(path: Path, limit: int, *, missing: str = "missing", what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; every problem names the file."""
    regular_file(path, what=what, missing=missing)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror})") from e
    if len(data) > limit:
        raise UserError(f"{path}: larger than {limit // 2**20} MiB; not a file loraswitch reads whole")
    return data

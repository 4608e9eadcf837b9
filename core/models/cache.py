"""The user cache (converted and random models): atomic publish plus a checksum manifest.

A directory is built in a temporary sibling and renamed into place only when complete, with a
manifest of sha256 sums written last. A cache entry without a valid manifest (a killed
conversion, a truncated file, a disk error) is treated as absent and rebuilt, never used.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from loraswitch.core.files.atomic import fsync_dir, sha256_file

MANIFEST = ".loraswitch-manifest.json"


def cache_dir() -> Path:
    """$LORASWITCH_CACHE, else ~/.cache/loraswitch (created on first use by the callers)."""
    env = os.environ.get("LORASWITCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "loraswitch"


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path) -> None:
    """Fsync every file, then write the manifest (itself fsynced): it is the completion marker."""
    directory = Path(directory)
    entries = {}
    for p in _files(directory):
        with open(p, "rb") as f:
            os.fsync(f.fileno())
        entries[p.relative_to(directory).as_posix()] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    tmp = directory / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"version": 1, "files": entries}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)


def verify(directory: str | Path) -> bool:
    """True when ``directory`` has a manifest and every file in it matches (size and sha256),
    with no file missing or added."""
    directory = Path(directory)
    try:
        entries = json.loads((directory / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(entries, dict):
        return False
    present = {p.relative_to(directory).as_posix() for p in _files(directory)}
    if present != set(entries):
        return False
    for name, e in entries.items():
        p = directory / name
        try:
            if p.stat().st_size != e["size"] or sha256_file(p) != e["sha256"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def discard(target: str | Path) -> None:
    """Remove a cache entry: renamed aside first, so it stops counting as present at once."""
    target = Path(target)
    trash = target.parent / f".{target.name}.discarded-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(target, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def publish_dir(target: str | Path, build: Callable[[Path], None]) -> Path:
    """Return ``target`` if it verifies; otherwise call ``build(tmp)`` to fill a temporary
    sibling directory, write its manifest and rename it to ``target`` (replacing a damaged one).
    Two processes racing both build; the first rename wins and the loser's copy is discarded."""
    target = Path(target)
    if verify(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        build(tmp)
        write_manifest(tmp)
        fsync_dir(tmp)
        if target.exists():
            if verify(target):  # another process finished first
                return target
            discard(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if verify(target):  # lost a race against another builder
                return target
            raise
        fsync_dir(target.parent)
        return target
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


COMPILE_CACHE_VARIABLES = {"torch": "TORCHINDUCTOR_CACHE_DIR", "jax": "JAX_COMPILATION_CACHE_DIR"}


def compile_cache_dir(framework: str) -> Path:
    """Where a framework keeps compiled programs between runs, so a second run's warm-up skips
    the compiler: the framework's own variable (TORCHINDUCTOR_CACHE_DIR, JAX_COMPILATION_CACHE_DIR)
    if set, else ``<cache>/compile/<framework>``."""
    env = os.environ.get(COMPILE_CACHE_VARIABLES[framework])
    return Path(env) if env else cache_dir() / "compile" / framework

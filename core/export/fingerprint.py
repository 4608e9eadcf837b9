"""The base-weights fingerprint: which weights an adapter was trained on, checked before merging.

Merging an adapter onto other weights than it was trained on gives a different model without
any error (transformers#31293). So every backend records, when it saves an adapter,
``base_fingerprint(model_dir)``; ``loraswitch merge`` and ``export`` compare it with the base
they are given and refuse a mismatch (``--force`` overrides).

The fingerprint is sha256 over, for every tensor in name order: its name, dtype and shape, and
4 windows of 1 KiB of its data (at the start, one third, two thirds and the end). That is
~300 small reads for an 8B model (milliseconds once cached, well under a second cold), where a
full hash would read 16 GB on every checkpoint. It tells apart different checkpoints of one
architecture (a fine-tune changes every tensor, so the sampled bytes differ), a different
family or size (names and shapes), and a cast to another dtype; it does not depend on how the
weights are split into files. What it cannot see is a change confined to the unsampled bytes
of every tensor, which no real checkpoint difference is.

The fingerprint is stored in its own file in the adapter directory, ``loraswitch_base.json``,
rather than as a key in adapter_config.json: peft and other loaders (vLLM, llama.cpp's
converter) read adapter_config.json into their own config classes, and older peft versions
refuse keys they do not know. An extra file is ignored by all of them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from loraswitch.core.errors import UserError
from loraswitch.core.export.tensors import SafetensorsDir
from loraswitch.core.models.model_dir import weight_files

FINGERPRINT_FILE = "loraswitch_base.json"
FORMAT = "loraswitch-base-fingerprint/1"
WINDOW = 1024
N_WINDOWS = 4


def base_fingerprint(model_dir: str | Path) -> str:
    """The fingerprint of the safetensors weights in ``model_dir`` ("v1:" + sha256 hex)."""
    model_dir = Path(model_dir).resolve()
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in weight_files(model_dir))
    return _fingerprint(model_dir, stamp)


@functools.lru_cache(maxsize=8)
def _fingerprint(model_dir: Path, stamp: tuple) -> str:  # stamp: files, sizes and times, so an edit recomputes
    weights = SafetensorsDir(model_dir)
    h = hashlib.sha256()
    handles: dict[Path, int] = {}
    try:
        for name in sorted(weights.entries):
            e = weights.entries[name]
            h.update(f"{name}\0{e.dtype}\0{list(e.shape)}\0".encode())
            fd = handles.get(e.file)
            if fd is None:
                fd = handles[e.file] = os.open(e.file, os.O_RDONLY)
            for i in range(N_WINDOWS):
                start = max(0, (e.nbytes - WINDOW) * i // (N_WINDOWS - 1))
                h.update(os.pread(fd, min(WINDOW, e.nbytes), e.offset + start))
    finally:
        for fd in handles.values():
            os.close(fd)
    return "v1:" + h.hexdigest()


def write_base_fingerprint(adapter_dir: Path, model_dir: Path | None, base_name: str | None = None) -> None:
    """Record the base's fingerprint beside a saved adapter. Backends call this in save_adapter;
    a base without weights on disk (a random init drawn by the backend) records nothing."""
    if model_dir is None or not weight_files(Path(model_dir)):
        return
    record = {"format": FORMAT, "fingerprint": base_fingerprint(model_dir), "base": base_name}
    (Path(adapter_dir) / FINGERPRINT_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_base_fingerprint(adapter_dir: Path) -> str | None:
    """The fingerprint an adapter recorded, or None for an adapter without one (older, or peft's)."""
    path = Path(adapter_dir) / FINGERPRINT_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        value = record["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a valid base fingerprint file ({type(e).__name__})") from e
    if not isinstance(value, str):
        raise UserError(f"{path}: 'fingerprint' must be a string")
    return value


def check_base(adapter_dir: Path, model_dir: Path, base_label: str, *, force: bool) -> str | None:
    """Refuse a base whose fingerprint differs from the adapter's record (unless ``force``).
    Returns a one-line warning to show when there is nothing to compare, else None."""
    recorded = read_base_fingerprint(adapter_dir)
    if recorded is None:
        return (
            f"{adapter_dir}: no {FINGERPRINT_FILE} (an older adapter, or one written by peft); "
            f"cannot verify that {base_label} is the base it was trained on"
        )
    actual = base_fingerprint(model_dir)
    if actual != recorded and not force:
        raise UserError(
            f"{adapter_dir / FINGERPRINT_FILE}: the adapter was trained on other base weights than {base_label} "
            f"(fingerprint {recorded[:15]} vs {actual[:15]}); give the right --model, or --force to merge anyway"
        )
    if actual != recorded:
        return f"{adapter_dir}: base fingerprint differs from {base_label}; merging anyway (--force)"
    return None

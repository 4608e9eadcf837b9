"""Sharded safetensors written tensor by tensor, with ``model.safetensors.index.json``.

The safetensors library writes a file from a complete dict of tensors, which for an 8B model
means holding a whole shard in memory. The format is simple (8-byte little-endian header
length, a JSON header with each tensor's dtype, shape and data offsets, then the raw data), and
every name, dtype and shape is known before the first byte is merged, so the header is written
first and the data streamed after it, block by block. The files are read back by the
safetensors library and by transformers in the tests.

Shards follow Hugging Face's names: one file is ``model.safetensors``; several are
``model-00001-of-0000N.safetensors`` listed by the index, as ``save_pretrained`` writes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from loraswitch.core.export.tensors import STORAGE
from loraswitch.core.models.model_dir import INDEX_FILE

SINGLE_FILE = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' save_pretrained default ("5GB")


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str  # safetensors name
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * STORAGE[self.dtype].itemsize


def plan_shards(tensors: list[OutTensor], max_bytes: int) -> list[list[OutTensor]]:
    """Tensors in order, cut into shards of at most ``max_bytes`` (a larger tensor gets its own)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    return [SINGLE_FILE] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def header_bytes(tensors: list[OutTensor]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the library pads it
    return len(raw).to_bytes(8, "little") + raw


def write_bytes(f, data: bytes | memoryview) -> None:
    """Every byte the writer puts on disk goes through here (the disk-full tests replace it)."""
    f.write(data)


class ShardWriter:
    """Write ``tensors`` (names, dtypes, shapes known up front) into ``directory``; call
    ``write(name, blocks)`` once per tensor, in order, with its data as consecutive blocks."""

    def __init__(self, directory: Path, tensors: list[OutTensor], max_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.directory = Path(directory)
        self.shards = plan_shards(tensors, max_bytes)
        self.names = shard_names(len(self.shards))
        self.order = [(i, t) for i, shard in enumerate(self.shards) for t in shard]
        self.position = 0
        self.file: BinaryIO | None = None
        self.file_index = -1

    def write(self, name: str, blocks: Iterable[np.ndarray]) -> None:
        index, expected = self.order[self.position]
        if name != expected.name:
            raise RuntimeError(f"shard writer: expected tensor {expected.name!r}, got {name!r}")
        if index != self.file_index:
            self._open(index)
        written = 0
        for block in blocks:
            data = np.ascontiguousarray(block, dtype=STORAGE[expected.dtype])
            write_bytes(self.file, data.reshape(-1).view(np.uint8).data)
            written += data.nbytes
        if written != expected.nbytes:
            raise RuntimeError(f"shard writer: tensor {name!r} got {written} bytes, expected {expected.nbytes}")
        self.position += 1

    def close(self) -> None:
        """Finish the last shard and write the index (only when there are several shards)."""
        if self.position != len(self.order):
            raise RuntimeError(f"shard writer: {len(self.order) - self.position} tensors were not written")
        self._close_file()
        if len(self.shards) > 1:
            weight_map = {t.name: self.names[i] for i, t in self.order}
            total = sum(t.nbytes for _, t in self.order)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def _open(self, index: int) -> None:
        self._close_file()
        self.file = open(self.directory / self.names[index], "wb")
        self.file_index = index
        write_bytes(self.file, header_bytes(self.shards[index]))

    def _close_file(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None

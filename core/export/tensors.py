"""A model directory's safetensors, read one tensor (or one block of rows) at a time.

Merging an 8B model must not hold 16 GB in memory, so tensors are read with plain positioned
reads (``np.fromfile`` at the tensor's offset) rather than by loading or memory-mapping whole
files: a memory map keeps every touched page in the process's resident set until it is
unmapped, a positioned read keeps only the block being merged. The headers are parsed by
``models.model_dir.read_safetensors_header``, which already checks them against the file size.

numpy has no bfloat16, so bf16 tensors are read as uint16 and widened here (bf16 is the upper
half of a float32); narrowing rounds to nearest even, as torch does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loraswitch.core.errors import UserError
from loraswitch.core.models.model_dir import read_safetensors_header, weight_files

# safetensors dtype name -> (numpy storage dtype, bytes per element)
STORAGE: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
# the --dtype names users give -> safetensors dtype names
DTYPE_NAMES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
TORCH_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    file: Path
    dtype: str  # safetensors name: F32, BF16, ...
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in ``file``
    nbytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


class SafetensorsDir:
    """Every tensor of a model directory's safetensors files, by name."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.entries: dict[str, TensorEntry] = {}
        for file in weight_files(self.directory):
            with open(file, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
            for name, info in read_safetensors_header(file).items():
                if info.get("dtype") not in STORAGE:
                    raise UserError(
                        f"{file}: tensor {name!r} has dtype {info.get('dtype')!r}, which loraswitch cannot read"
                    )
                start, end = info["data_offsets"]
                entry = TensorEntry(
                    name, file, info["dtype"], tuple(info["shape"]), 8 + header_len + start, end - start
                )
                if entry.n_elements * STORAGE[entry.dtype].itemsize != entry.nbytes:
                    raise UserError(
                        f"{file}: tensor {name!r} holds {entry.nbytes} bytes, not {info['dtype']} x {list(entry.shape)}"
                    )
                self.entries[name] = entry
        if not self.entries:
            raise UserError(f"{self.directory}: no *.safetensors weights")

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of a tensor (the first axis), as stored (bf16 as uint16)."""
        e = self.entries[name]
        row = int(np.prod(e.shape[1:], dtype=np.int64)) if len(e.shape) > 1 else 1
        storage = STORAGE[e.dtype]
        count = (stop - start) * row
        with open(e.file, "rb") as f:
            data = np.fromfile(f, dtype=storage, count=count, offset=e.offset + start * row * storage.itemsize)
        if data.size != count:
            raise UserError(f"{e.file}: tensor {name!r} ends early; the file is truncated")
        return data.reshape((stop - start, *e.shape[1:]) if e.shape else ())

    def read(self, name: str) -> np.ndarray:
        e = self.entries[name]
        return self.rows(name, 0, e.shape[0] if e.shape else 1).reshape(e.shape)


def to_float32(data: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values (``dtype`` a safetensors name) as float32."""
    if dtype == "BF16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32)


def from_float32(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values in the storage of ``dtype`` (F32, F16 or BF16: round to nearest even)."""
    if dtype == "F32":
        return np.ascontiguousarray(x, dtype="<f4")
    if dtype == "F16":
        return np.ascontiguousarray(x, dtype="<f2")
    if dtype == "BF16":
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
        nan = np.isnan(x)
        return np.where(nan, (bits >> 16) | 0x40, rounded).astype("<u2")  # keep NaNs NaN (quiet bit)
    raise ValueError(f"cannot write float values as {dtype}")


def row_blocks(n_rows: int, row_bytes: int, budget: int) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges whose float32 size stays within ``budget`` bytes (at least one row)."""
    step = max(1, budget // max(1, row_bytes))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)

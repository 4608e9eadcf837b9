"""Safetensors files read and written with numpy, every problem a one-line UserError naming the file.

Adapters, optimizer states and model weights are all safetensors. Model directories, adapters
and checkpoints are user input, so a truncated download, a header that lies about its tensors or a
dtype we cannot use must be reported naming the file (and the tensor), not as a library
traceback. The header is read and checked by safetensors_header.py, and the tensors are read
with numpy: no framework is needed, and bf16 (which numpy has no dtype for) is widened exactly to
float32 from its 16 bits.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from loraswitch.core.errors import UserError
from loraswitch.core.files.atomic import atomic_write_bytes
from loraswitch.core.files.safetensors_header import read_header_and_data_start, read_safetensors_header

# safetensors dtype codes numpy can read as they are (little-endian, as the format stores them)
NUMPY_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
BF16 = "BF16"  # read as uint16 and widened to float32 (the same bits, 16 zero bits appended)
FLOAT_CODES = ("F64", "F32", "F16", BF16)


def read_header(path: Path) -> dict[str, Any]:
    """The header of a .safetensors file ({name: {dtype, shape, data_offsets}}, without
    ``__metadata__``), every entry checked against the format's rules (safetensors_header.py)."""
    return read_safetensors_header(Path(path))


def read_tensors(path: str | Path, *, if_missing: str = "") -> dict[str, np.ndarray]:
    """Every tensor of ``path`` as a writable numpy array (bf16 widened to float32). A missing
    file is reported as "PATH: missing; IF_MISSING"."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing" + (f"; {if_missing}" if if_missing else ""))
    header, data_start = read_header_and_data_start(path)
    raw = path.read_bytes()
    out = {}
    for name, info in header.items():
        code, shape = info.get("dtype"), tuple(info["shape"])
        if code != BF16 and code not in NUMPY_DTYPES:
            raise UserError(f"{path}: tensor {name!r} has dtype {code!r}, which loraswitch does not read")
        dtype = np.dtype("<u2" if code == BF16 else NUMPY_DTYPES[code])
        start, _ = info["data_offsets"]  # the header reader checked the length against dtype and shape
        count = math.prod(shape)
        array = np.frombuffer(raw, dtype=dtype, count=count, offset=data_start + start).reshape(shape)
        out[name] = (array.astype(np.uint32) << 16).view(np.float32) if code == BF16 else array.copy()
    return out


def tensor_dtypes(path: Path) -> dict[str, str]:
    """Each tensor's safetensors dtype code ("F32", "BF16", ...), from the header alone."""
    return {name: str(info.get("dtype")) for name, info in read_header(path).items()}


def write_tensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` atomically (a reader sees the old file or the whole new one)."""
    from safetensors.numpy import save

    arrays = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    atomic_write_bytes(path, save(arrays, metadata=metadata))

"""Safetensors files read and written with numpy, every problem a one-line UserError naming the file.

Adapters, optimizer states and model weights are all safetensors. Model directories, adapters
and checkpoints are user input, so a truncated download, a header that lies about its tensors or a
dtype we cannot use must be reported naming the file (and the tensor), not as a library
traceback. The header is parsed here with json and struct, checked against the file size, and the
tensors are read with numpy: no framework is needed, and bf16 (which numpy has no dtype for) is
widened exactly to float32 from its 16 bits.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from loraswitch.core.errors import UserError
from loraswitch.core.files.atomic import atomic_write_bytes

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
_MAX_HEADER = 100_000_000


def read_header(path: Path) -> dict[str, Any]:
    """The header of a .safetensors file ({name: {dtype, shape, data_offsets}}, without
    ``__metadata__``), checked against the file size so a truncated file is caught."""
    return _read_header(Path(path))[0]


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(header, byte offset where the tensor data starts)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > _MAX_HEADER:
                raise UserError(
                    f"{path}: safetensors header length {n} exceeds the file size {size}; "
                    "the file is truncated or not safetensors"
                )
            header = json.loads(f.read(n))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: safetensors header is not valid JSON; the file is damaged or not safetensors") from e
    if not isinstance(header, dict):
        raise UserError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    for name, info in header.items():
        try:
            start, end = info["data_offsets"]
            shape = [int(d) for d in info["shape"]]
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}: safetensors entry {name!r} has no valid shape/data_offsets") from e
        if not 0 <= start <= end or end > data_size:
            raise UserError(
                f"{path}: tensor {name!r} ends at byte {end} but the file holds {data_size} data bytes; "
                "the file is truncated"
            )
        info["shape"] = shape
    return header, 8 + n


def read_tensors(path: str | Path, *, if_missing: str = "") -> dict[str, np.ndarray]:
    """Every tensor of ``path`` as a writable numpy array (bf16 widened to float32). A missing
    file is reported as "PATH: missing; IF_MISSING"."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing" + (f"; {if_missing}" if if_missing else ""))
    header, data_start = _read_header(path)
    raw = path.read_bytes()
    out = {}
    for name, info in header.items():
        code, shape = info.get("dtype"), tuple(info["shape"])
        if code != BF16 and code not in NUMPY_DTYPES:
            raise UserError(f"{path}: tensor {name!r} has dtype {code!r}, which loraswitch does not read")
        dtype = np.dtype("<u2" if code == BF16 else NUMPY_DTYPES[code])
        start, end = info["data_offsets"]
        count = math.prod(shape)
        if end - start != count * dtype.itemsize:
            raise UserError(
                f"{path}: tensor {name!r} ({code} {list(shape)}) should take {count * dtype.itemsize} bytes "
                f"but its data_offsets span {end - start}; the file is damaged"
            )
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

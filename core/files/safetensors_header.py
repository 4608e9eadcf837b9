"""The header of a .safetensors file, read with struct and the bounded JSON parser: no tensor
is read, so checking a 16 GB model costs a few small reads.

The header is checked against the format's rules (safetensors' own loader enforces the same
ones, but only when a framework loads the file, with a message that names no file): a known
dtype, a shape of non-negative integers, and data offsets inside the file whose length is
exactly what dtype and shape need, the tensors tiling the data area. A truncated download or a
file that is not safetensors is named here, before any backend starts.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import parse_json
from loraswitch.core.files.paths import regular_file

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """{tensor name: {"dtype", "shape", "data_offsets"}} of a .safetensors file (``__metadata__``
    dropped), every entry checked; any problem is a UserError naming the file (and tensor)."""
    return read_header_and_data_start(path)[0]


def read_header_and_data_start(path: Path) -> tuple[dict[str, Any], int]:
    """The checked header and the byte offset where the tensor data starts (8 + header length)."""
    path = Path(path)
    regular_file(path, what="weights file")  # a FIFO would block the read below
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > MAX_HEADER_BYTES:
                raise UserError(
                    f"{path}: safetensors header length {n} exceeds the file size {size}; the file is truncated or not safetensors"
                )
            raw = f.read(n)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from e
    header = parse_json(
        raw, str(path), invalid="safetensors header is not valid JSON; the file is damaged or not safetensors"
    )
    if not isinstance(header, dict):
        raise UserError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise UserError(f"{path}: safetensors __metadata__ must map strings to strings")
    data_size = size - 8 - n
    for name, info in header.items():
        _check_entry(path, name, info, data_size)
    _check_layout(path, header, data_size)
    return header, 8 + n


def _check_layout(path: Path, header: dict[str, Any], data_size: int) -> None:
    """As safetensors' own loader requires: the tensors tile the data area, without gap or
    overlap, to its last byte (so a file loraswitch accepts is one every framework loads)."""
    end = 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        start, stop = info["data_offsets"]
        if start != end:
            raise UserError(
                f"{path}: tensor {name!r} starts at byte {start}, expected {end}; the tensors overlap or leave a gap"
            )
        end = stop
    if end != data_size:
        raise UserError(f"{path}: the tensors end at byte {end} but the file holds {data_size} data bytes")


def _check_entry(path: Path, name: str, info: Any, data_size: int) -> None:
    """One tensor's entry: known dtype, shape and offsets whose length matches them."""
    if not isinstance(info, dict):
        raise UserError(f"{path}: safetensors entry {name!r} has no valid shape/data_offsets")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise UserError(f"{path}: safetensors entry {name!r} has no valid shape/data_offsets (shape {shape!r})")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise UserError(f"{path}: safetensors entry {name!r} has no valid shape/data_offsets ({offsets!r})")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise UserError(f"{path}: tensor {name!r} has unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})")
    start, end = offsets
    if not start <= end or end > data_size:
        raise UserError(
            f"{path}: tensor {name!r} ends at byte {end} but the file holds {data_size} data bytes; the file is truncated"
        )
    if end - start != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise UserError(
            f"{path}: tensor {name!r} has {end - start} bytes, but {dtype} {shape} needs "
            f"{math.prod(shape) * DTYPE_BYTES[dtype]}; the file is damaged"
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0

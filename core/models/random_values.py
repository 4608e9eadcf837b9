"""One random model per ``random:<shape>`` and seed, whatever the backend, device or sharding.

A framework's random generator draws differently per framework, per device kind and per
sharding (torch under FSDP drew another model than unsharded torch; jax another than both), so
bench rows and parity runs on large random shapes did not train the same model. Here every base
weight is a pure function of integers, computed where the weight lives:

    weight[name][i] = STEP * (bits(seed, name, i) - 2^23),   bits = hash >> 8 in [0, 2^24)

with ``i`` the element's row-major index in the Hugging Face shape ([out, in] for linear
layers) and the hash the 32-bit mixer of the portable dropout (``core.adapters.dropout.mix32``),
keyed by (seed, crc32 of the tensor's HF name). The values are uniform on [-a, a) with
a = 0.02·√3: standard deviation 0.02, HF's ``initializer_range``. Norm scales are 1.

Bit-identical in every framework: the integer part uses only ``^ >> * &`` (see mix32), the
24-bit integer converts to fp32 exactly, and the single fp32 multiplication by ``STEP`` (an fp32
number) is correctly rounded by IEEE 754 on every device. A cast to bf16 afterwards rounds to
nearest-even everywhere. numpy (here) is the reference; backends evaluate ``bits`` on the device
over just their own shards.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from loraswitch.core.adapters.dropout import MASK32, mix32

INIT_STD = 0.02  # HF's initializer_range for Llama-like models
HALF = 1 << 23  # bits are centred on this
STEP = float(np.float32(INIT_STD * 3**0.5 / HALF))  # an fp32 value: one correctly rounded product
_SALT = 0x3C6EF372
MAX_ELEMENTS = 1 << 32  # element indices are 32-bit


def is_norm(name: str) -> bool:
    """Norm scales start at one (``input_layernorm.weight``, ``self_attn.q_norm.weight``, ...)."""
    return name.endswith("norm.weight")


def tensor_keys(seed: int, name: str) -> tuple[int, int]:
    """The two 32-bit keys of one tensor (host-side Python ints)."""
    k = _SALT
    for word in (seed & MASK32, (seed >> 32) & MASK32, zlib.crc32(name.encode())):
        k = mix32(k ^ word, wide=True)
    return k, mix32(k ^ _SALT, wide=True)


def bits(index: Any, key0: Any, key1: Any, wide: bool) -> Any:
    """24 random bits per element index (integers in [0, 2^32), the framework's integer type:
    uint32 with ``wide=False``, int64/uint64 with ``wide=True``)."""
    return mix32(mix32(index ^ key0, wide) ^ key1, wide) >> 8


def check_size(name: str, shape: tuple[int, ...]) -> None:
    if int(np.prod(shape, dtype=np.int64)) > MAX_ELEMENTS:
        raise ValueError(f"random weights: {name} has more than 2^32 elements")


def numpy_values(seed: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The reference: fp32 values of tensor ``name`` (HF name and shape)."""
    if is_norm(name):
        return np.ones(shape, np.float32)
    check_size(name, shape)
    k0, k1 = tensor_keys(seed, name)
    index = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint32)
    b = bits(index, np.uint32(k0), np.uint32(k1), wide=False)
    return ((b.astype(np.int32) - HALF).astype(np.float32) * np.float32(STEP)).reshape(shape)

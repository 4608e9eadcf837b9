"""Portable LoRA dropout: a mask every framework computes bit for bit alike, on any device.

A framework's random generator gives each backend (and each device kind, and each device count)
its own masks, so two backends can only agree on a run without dropout. Here the mask is a pure
function of integers, a counter-based hash in the manner of Philox or Threefry but much smaller:

    keep(element) = hash(seed, step, micro, layer, module, token, feature) >= round(rate * 2^32)

- ``step`` and ``micro`` are the MicroStep's, ``layer`` and ``module`` the adapted module's
  coordinates (modules.dropout_site: q_proj 0 ... down_proj 6, lm_head 7);
- ``token`` is the position's index in the *global* micro-batch, row * T + t, with row the row
  of the whole micro-batch (a data-parallel process adds the index of its first row), and
  ``feature`` the index along the LoRA input's last axis. The mask does not depend on the device
  count, the sharding, or the order anything runs in; a resumed run replays it exactly. Both
  indices are 32-bit (a micro-batch of up to 2^32 positions); seeds count modulo 2^64.

The hash is built from 32-bit xor, right shift and multiplication by constants below 2^31
(``mix32``, the xorshift-multiply finaliser "lowbias32" from Chris Wellons' hash-prospector,
with constants chosen below 2^31 for the reason below). The functions here use only the
operators ``^ >> * &`` and Python int constants, so the same code runs on numpy arrays, Python
ints, torch tensors and jax arrays:

- JAX (x64 disabled) holds the values as uint32, whose multiplication wraps mod 2^32: ``wide=False``;
- torch's uint32 support is partial, so torch holds them as int64 (``wide=True``): every value
  stays below 2^32 and every product below 2^32 * 2^31 = 2^63, and ``& 0xFFFFFFFF`` after each
  product keeps exactly the low 32 bits that uint32 keeps;
- numpy, the reference, can use either (uint64 with ``wide=True``, uint32 with ``wide=False``).

The per-(step, micro, layer, module) keys are computed on the host (``key_table``) and given to
the device as one small integer array, so the only device work is ``element_hash``: three
``mix32`` over [tokens], [features] and [tokens, features]. Keep probability is exact to 2^-32;
kept elements are scaled by ``scale(rate)`` = fp32(1 / (1 - rate)), inverted dropout as in
``torch.nn.Dropout``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loraswitch.core.adapters.modules import MODULE_NUMBERS

MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x21F0AAAD, 0x735A2D97  # both odd and below 2^31 (see the module docstring)
_KEY_SALT = 0x2545F491  # start of the key chain
_FEATURE_SALT = 0x1B873593  # separates the feature key from the token key
N_MODULES = len(MODULE_NUMBERS)  # the key table's second axis: q, k, v, o, gate, up, down, lm_head


def mix32(x: Any, wide: bool) -> Any:
    """A bijection of 32-bit values with full avalanche. ``x`` holds values in [0, 2^32):
    uint32 (``wide=False``, products wrap) or a wider integer type (``wide=True``, masked)."""
    x = x ^ (x >> 16)
    x = x * _M1
    if wide:
        x = x & MASK32
    x = x ^ (x >> 15)
    x = x * _M2
    if wide:
        x = x & MASK32
    return x ^ (x >> 15)


def threshold(rate: float) -> int:
    """Keep an element iff its hash >= this: P(keep) = 1 - rate to 2^-32."""
    return min(round(rate * 2.0**32), MASK32)


def scale(rate: float) -> float:
    """What a kept element is multiplied by: 1 / (1 - rate) rounded to fp32 (a Python float
    holding an fp32 value, so every framework multiplies by the same number)."""
    return float(np.float32(1.0 / (1.0 - rate)))


def key_table(seed: int, step: int, micro: int, num_layers: int) -> np.ndarray:
    """uint32 [num_layers, N_MODULES, 2]: for every (layer, module) of one micro-step, the
    (token key, feature key) that ``element_hash`` takes. Seeds are used modulo 2^64."""
    words = [seed & MASK32, (seed >> 32) & MASK32, step & MASK32, micro & MASK32]
    h = np.full((num_layers, N_MODULES), _KEY_SALT, np.uint64)
    for word in words:
        h = mix32(h ^ np.uint64(word), wide=True)
    h = mix32(h ^ np.arange(num_layers, dtype=np.uint64)[:, None], wide=True)
    h = mix32(h ^ np.arange(N_MODULES, dtype=np.uint64)[None, :], wide=True)
    feature = mix32(h ^ np.uint64(_FEATURE_SALT), wide=True)
    return np.stack([h, feature], axis=-1).astype(np.uint32)


def element_hash(token_key: Any, feature_key: Any, tokens: Any, features: Any, wide: bool) -> Any:
    """32-bit hashes [*tokens.shape, len(features)] of every (token, feature) pair. ``tokens``
    are global token indices (``token_indices``), ``features`` 0..F-1, both in the integer type
    of the framework (uint32, or int64/uint64 with ``wide``); the keys are one row of ``key_table``."""
    per_token = mix32(tokens ^ token_key, wide)
    per_feature = mix32(features ^ feature_key, wide)
    return mix32(per_token[..., None] ^ per_feature, wide)


def token_indices(rows: int, length: int, first_row: int = 0) -> np.ndarray:
    """uint64 [rows, length]: (first_row + b) * length + t, the global index of each position."""
    return (np.arange(first_row, first_row + rows, dtype=np.uint64)[:, None] * np.uint64(length)) + np.arange(
        length, dtype=np.uint64
    )


def keep_mask(
    seed: int, step: int, micro: int, layer: int, module: int, shape: tuple[int, ...], rate: float, first_row: int = 0
) -> np.ndarray:
    """The reference: bool [B, T, F] keep mask of the input of module (layer, module) for
    a micro-batch of B rows of length T whose first row is row ``first_row`` of the global batch."""
    rows, length, features = shape
    keys = key_table(seed, step, micro, layer + 1)[layer, module].astype(np.uint64)
    hashes = element_hash(
        keys[0], keys[1], token_indices(rows, length, first_row), np.arange(features, dtype=np.uint64), wide=True
    )
    return hashes >= np.uint64(threshold(rate))


def apply(x: np.ndarray, keep: np.ndarray, rate: float) -> np.ndarray:
    """Inverted dropout with a given keep mask, in numpy (kept elements times ``scale(rate)``)."""
    return np.where(keep, x * np.asarray(scale(rate), x.dtype), np.zeros((), x.dtype))

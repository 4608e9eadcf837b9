"""The portable dropout mask in numpy, the reference the torch and jax backends are held to
(tests/backends/test_identical_init_and_masks.py checks them bit for bit against it)."""

from __future__ import annotations

import numpy as np
import pytest

from loraswitch.core.adapters import dropout as D


def test_uint32_and_wide_arithmetic_agree_with_python_ints():
    """The three integer types a framework may hold the hash in give the same bits."""
    x = np.random.default_rng(0).integers(0, 2**32, 4096, dtype=np.uint64)
    wide = D.mix32(x, wide=True)
    narrow = D.mix32(x.astype(np.uint32), wide=False)
    signed = D.mix32(x.astype(np.int64), wide=True)  # torch's int64 scheme: products stay below 2^63
    assert np.array_equal(wide, narrow.astype(np.uint64)) and np.array_equal(wide, signed.astype(np.uint64))
    assert [D.mix32(int(v), wide=True) for v in x[:16]] == [int(v) for v in wide[:16]]
    assert wide.max() < 2**32 and len(np.unique(wide)) == len(np.unique(x))  # a bijection on 32 bits


def test_every_output_bit_flips_with_every_input_bit_half_the_time():
    x = np.random.default_rng(1).integers(0, 2**32, 100_000, dtype=np.uint64)
    h = D.mix32(x, wide=True)
    for bit in range(32):
        flipped = D.mix32(x ^ np.uint64(1 << bit), wide=True) ^ h
        rates = [((flipped >> np.uint64(j)) & np.uint64(1)).mean() for j in range(32)]
        assert np.abs(np.array(rates) - 0.5).max() < 0.01, bit


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.5])
def test_keep_rate_and_independence(rate):
    mask = D.keep_mask(7, 3, 1, 2, 4, (8, 128, 256), rate)
    n = mask.size
    assert abs(mask.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    m = mask.astype(np.float64)
    limit = 5 / np.sqrt(n)
    assert abs(np.corrcoef(m[:, :-1].ravel(), m[:, 1:].ravel())[0, 1]) < limit  # neighbouring tokens
    assert abs(np.corrcoef(m[..., :-1].ravel(), m[..., 1:].ravel())[0, 1]) < limit  # neighbouring features
    assert abs(np.corrcoef(m[:-1].ravel(), m[1:].ravel())[0, 1]) < limit  # neighbouring rows
    for other in (D.keep_mask(7, 3, 1, 2, 5, mask.shape, rate), D.keep_mask(7, 4, 1, 2, 4, mask.shape, rate)):
        assert abs(np.corrcoef(m.ravel(), other.ravel())[0, 1]) < limit  # another module, another step
    # four elements at the corners of a token x feature rectangle, the hash's weakest spot
    parity = mask[:, :-1, :-1] ^ mask[:, 1:, :-1] ^ mask[:, :-1, 1:] ^ mask[:, 1:, 1:]
    assert abs(parity.mean() - (1 - (1 - 2 * rate) ** 4) / 2) < 5 * 0.5 / np.sqrt(parity.size)


def test_the_probability_is_exact_to_2_to_the_minus_32():
    assert D.threshold(0.1) == 429496730 and D.threshold(0.0) == 0 and D.threshold(0.999999999999) == 2**32 - 1
    assert D.scale(0.1) == float(np.float32(1 / 0.9))


def test_a_data_parallel_block_sees_its_rows_of_the_global_mask():
    whole = D.keep_mask(0, 5, 2, 1, 3, (8, 16, 32), 0.3)
    blocks = [D.keep_mask(0, 5, 2, 1, 3, (2, 16, 32), 0.3, first_row=2 * i) for i in range(4)]
    assert np.array_equal(np.concatenate(blocks), whole)


def test_keys_depend_on_every_coordinate():
    table = D.key_table(0, 0, 0, 4)
    assert table.shape == (4, D.N_MODULES, 2) and table.dtype == np.uint32
    tables = [
        table,
        D.key_table(1, 0, 0, 4),
        D.key_table(0, 1, 0, 4),
        D.key_table(0, 0, 1, 4),
        D.key_table(2**32, 0, 0, 4),
    ]
    keys = np.concatenate([t.reshape(-1, 2) for t in tables])
    assert len({tuple(k) for k in keys}) == len(keys)  # no two (seed, step, micro, layer, module) share a key
    assert np.array_equal(D.key_table(0, 0, 0, 8)[:4], table)  # a layer's key does not depend on the depth


def test_the_numbers_are_pinned():
    """Any change to the hash changes every run with dropout: pin a few."""
    assert D.key_table(0, 0, 0, 1)[0, 0].tolist() == PINNED_KEY
    assert np.packbits(D.keep_mask(0, 0, 0, 0, 0, (1, 2, 8), 0.5)).tolist() == PINNED_MASK


PINNED_KEY = [406618322, 678534942]
PINNED_MASK = [27, 52]


def test_apply_is_inverted_dropout():
    x = np.arange(1, 7, dtype=np.float32).reshape(1, 2, 3)
    keep = np.array([[[True, False, True], [False, True, True]]])
    out = D.apply(x, keep, 0.25)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.where(keep, x * np.float32(1 / 0.75), 0))

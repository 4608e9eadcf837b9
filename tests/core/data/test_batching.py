"""Epoch order, length grouping, padding into micro-batches and exact packing."""

from __future__ import annotations

import numpy as np
import pytest

from loraswitch.core.data.batching import (
    GROUP_MEGABATCHES,
    PackedRow,
    collate,
    epoch_order,
    grouped_order,
    pack,
    padding_fraction,
)
from loraswitch.core.types import IGNORE_INDEX, TokenizedExample


def ex(ids, mask=None):
    ids = np.asarray(ids, dtype=np.int32)
    mask = np.ones(len(ids), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    mask[0] = False
    return TokenizedExample(ids, mask)


def test_epoch_order_is_a_seeded_permutation_that_changes_per_epoch():
    # Pinned: a resumed run recomputes this order, so it must never change between releases.
    assert epoch_order(8, seed=0, epoch=0).tolist() == [4, 7, 5, 1, 2, 3, 0, 6]
    a = epoch_order(50, seed=1, epoch=0)
    assert sorted(a.tolist()) == list(range(50))
    assert epoch_order(50, 1, 0).tolist() == a.tolist()
    assert epoch_order(50, 1, 1).tolist() != a.tolist()
    assert epoch_order(50, 2, 0).tolist() != a.tolist()
    assert epoch_order(0, 1, 0).tolist() == []


def test_collate_pads_right_to_a_multiple_with_labels_from_the_mask():
    b = collate([ex([5, 6, 7], [0, 0, 1]), ex([8, 9])], batch_size=2, pad_id=0, pad_to_multiple=4)
    assert b.input_ids.tolist() == [[5, 6, 7, 0], [8, 9, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert b.labels.tolist() == [[-100, -100, 7, -100], [-100, 9, -100, -100]]
    assert b.n_targets == 2 and b.n_tokens == 5
    assert b.input_ids.dtype == np.int32 and b.labels.dtype == np.int32 and b.attention_mask.dtype == np.int32


def test_collate_fills_a_short_batch_with_rows_that_attend_to_one_token():
    b = collate([ex(range(1, 18))], batch_size=3, pad_id=99)
    assert b.input_ids.shape == (3, 32)  # 17 rounded up to 16's multiple
    assert (b.input_ids[1:] == 99).all()
    assert b.attention_mask[1:].sum(axis=1).tolist() == [1, 1] and (b.attention_mask[1:, 0] == 1).all()
    assert (b.labels[1:] == IGNORE_INDEX).all()
    assert b.n_targets == 16


def test_collate_caps_length_at_max_len_and_rejects_overflow():
    b = collate([ex(range(1, 18))], batch_size=1, pad_id=0, max_len=20)
    assert b.input_ids.shape == (1, 20)
    with pytest.raises(ValueError, match="exceeds max_len"):
        collate([ex(range(1, 30))], batch_size=1, pad_id=0, max_len=20)
    with pytest.raises(ValueError, match="do not fit"):
        collate([ex([1, 2])] * 3, batch_size=2, pad_id=0)


def test_pack_keeps_order_and_masks():
    examples = [ex([1, 2, 3], [0, 0, 1]), ex([4, 5, 6]), ex([7, 8, 9, 10, 11]), ex([12, 13])]
    rows = pack(examples, max_seq_len=6)
    assert [r.input_ids.tolist() for r in rows] == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11], [12, 13]]
    # The first token of each packed example is never a target, even if its mask said so.
    assert rows[0].loss_mask.tolist() == [False, False, True, False, True, True]
    assert sum(r.n_targets for r in rows) == sum(e.n_targets for e in examples)
    assert all(r.input_ids.dtype == np.int32 for r in rows)


def test_pack_clears_a_first_token_target_and_rejects_long_examples():
    odd = TokenizedExample(np.array([1, 2], dtype=np.int32), np.array([True, True]))
    rows = pack([ex([9, 9]), odd], max_seq_len=8)
    assert rows[0].loss_mask.tolist() == [False, True, False, True]
    assert odd.loss_mask.tolist() == [True, True]  # the input is not modified
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        pack([ex(range(10))], max_seq_len=8)


def test_pack_places_by_best_fit_and_never_splits_an_example():
    # 5 opens row 0 (room 3), 4 opens row 1 (room 4), 3 goes to row 0 (the tightest fit),
    # 4 fills row 1, 2 opens row 2.
    examples = [ex(range(1, 6)), ex(range(10, 14)), ex(range(20, 23)), ex(range(30, 34)), ex([40, 41])]
    rows = pack(examples, max_seq_len=8)
    assert [r.lengths for r in rows] == [[5, 3], [4, 4], [2]]
    assert all(isinstance(r, PackedRow) for r in rows)
    placed = sorted(int(t) for r in rows for t in r.input_ids)
    assert placed == sorted(int(t) for e in examples for t in e.input_ids)


def test_collate_of_packed_rows_carries_segments_and_restarting_positions():
    rows = pack([ex([1, 2, 3], [0, 1, 1]), ex([4, 5]), ex([6, 7, 8, 9])], max_seq_len=6)
    b = collate(rows, batch_size=3, pad_id=0, max_len=6)
    assert b.packed and b.input_ids.shape == (3, 6)  # packed batches always have max_len columns
    assert b.input_ids[0].tolist() == [1, 2, 3, 4, 5, 0]
    assert b.segment_ids[0].tolist() == [1, 1, 1, 2, 2, 0]
    assert b.position_ids[0].tolist() == [0, 1, 2, 0, 1, 0]
    assert b.segment_ids[1].tolist() == [1, 1, 1, 1, 0, 0] and b.position_ids[1].tolist() == [0, 1, 2, 3, 0, 1]
    assert b.segment_ids[2].tolist() == [0] * 6 and (b.labels[2] == IGNORE_INDEX).all()  # a filler row
    # each example's first token is no target, so packing keeps every example's targets and no more
    assert b.labels[0].tolist() == [-100, 2, 3, -100, 5, -100]
    assert b.n_targets == sum(r.n_targets for r in rows) == 2 + 1 + 3
    unpacked = collate([ex([1, 2, 3])], batch_size=1, pad_id=0)
    assert not unpacked.packed and unpacked.position_ids is None


def test_grouped_order_sorts_each_megabatch_longest_first_and_is_a_pure_function():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1000, 3 * GROUP_MEGABATCHES * 2 + 7).tolist()
    order = grouped_order(lengths, batch_size=2, seed=5, epoch=1)
    assert sorted(order.tolist()) == list(range(len(lengths)))
    assert order.tolist() == grouped_order(lengths, 2, 5, 1).tolist()  # resume recomputes it
    assert order.tolist() != grouped_order(lengths, 2, 5, 2).tolist()
    size = GROUP_MEGABATCHES * 2
    base = epoch_order(len(lengths), 5, 1)
    for start in range(0, len(lengths), size):
        part = order[start : start + size]
        assert set(part.tolist()) == set(base[start : start + size].tolist())  # same megabatches
        assert [lengths[i] for i in part] == sorted((lengths[i] for i in part), reverse=True)


def test_grouping_by_length_cuts_padding_on_long_tailed_lengths():
    """Lengths drawn like real chat data (log-normal, median 400, sigma 0.9, cut to [32, 2048]):
    micro-batches of 4 pad much less once grouped."""
    rng = np.random.default_rng(1)
    lengths = np.clip(np.round(400 * np.exp(0.9 * rng.standard_normal(800))), 32, 2048).astype(int)
    examples = [ex(np.ones(n)) for n in lengths]

    def pad(order):
        return padding_fraction([collate([examples[i] for i in order[j : j + 4]], 4, 0) for j in range(0, 800, 4)])

    shuffled, grouped = pad(epoch_order(800, 0, 0)), pad(grouped_order(lengths.tolist(), 4, 0, 0))
    assert shuffled > 0.3 and grouped < 0.1

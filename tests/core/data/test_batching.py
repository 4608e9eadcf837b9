"""Epoch order, padding into micro-batches and packing."""

from __future__ import annotations

import numpy as np
import pytest

from loraswitch.core.data.batching import collate, epoch_order, pack
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


def test_pack_is_greedy_in_order_and_keeps_masks():
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

"""Epoch order, padding into micro-batches, length grouping and exact packing. Pure numpy.

The epoch order depends only on (seed, epoch) (and, with ``group_by_length``, on the examples'
lengths), never on device count or backend, so every backend trains on the same examples in the
same order, and a resumed run can recompute the order of the epoch it stopped in.

Two ways to spend less compute on padding:

- ``group_by_length`` (unpacked): each epoch's shuffled order is cut into megabatches of
  ``GROUP_MEGABATCHES`` micro-batches and each megabatch is sorted by length, longest first, as
  transformers' ``LengthGroupedSampler`` does; a micro-batch then pads only to its own longest
  example (rounded up to ``pad_to_multiple_of``), and that longest is close to the others.
- ``pack`` (``packing: true``): examples share ``max_seq_len`` rows, placed by best fit. The
  rows carry segment and position ids (``Batch.segment_ids``/``position_ids``), and backends
  keep attention inside each example and restart rope positions, so packing is exact: the same
  per-token losses as one example per row (tests/backends/test_packing_exact.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from loraswitch.core.types import IGNORE_INDEX, Batch, TokenizedExample

_ORDER_STREAM = 0xE90C4  # keeps epoch orders independent of the split shuffle (dataset.py)
GROUP_MEGABATCHES = 50  # micro-batches per sorted megabatch: transformers' LengthGroupedSampler's mega_batch_mult


@dataclass(frozen=True)
class PackedRow:
    """Whole examples sharing one row, in order; ``collate`` turns them into segment ids."""

    examples: tuple[TokenizedExample, ...]

    @property
    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.examples]

    @property
    def input_ids(self) -> np.ndarray:
        return np.concatenate([np.asarray(e.input_ids, np.int32) for e in self.examples])

    @property
    def loss_mask(self) -> np.ndarray:
        # token 0 of every example is never a target (TokenizedExample), so no example is
        # trained to be predicted from the end of its neighbour
        masks = [np.array(e.loss_mask, dtype=bool, copy=True) for e in self.examples]
        for m in masks:
            m[0] = False
        return np.concatenate(masks)

    @property
    def n_targets(self) -> int:
        return sum(e.n_targets for e in self.examples)


Row: TypeAlias = TokenizedExample | PackedRow  # what collate takes: one example, or several packed


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of range(n) that epoch ``epoch`` visits the training examples in."""
    return np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(n)


def grouped_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """``epoch_order`` with each run of ``GROUP_MEGABATCHES * batch_size`` positions sorted by
    length, longest first (a stable sort: ties keep the shuffled order). Still a pure function
    of (seed, epoch, lengths), so resume recomputes it exactly."""
    order = epoch_order(len(lengths), seed, epoch)
    size = GROUP_MEGABATCHES * batch_size
    lens = np.asarray(lengths, dtype=np.int64)
    parts = [order[i : i + size] for i in range(0, len(order), size)]
    return np.concatenate([p[np.argsort(-lens[p], kind="stable")] for p in parts])


def padded_length(longest: int, pad_to_multiple: int, max_len: int | None) -> int:
    """``longest`` rounded up to ``pad_to_multiple``, capped at ``max_len``."""
    length = -(-longest // pad_to_multiple) * pad_to_multiple if pad_to_multiple > 1 else longest
    if max_len is not None:
        if longest > max_len:
            raise ValueError(f"an example of {longest} tokens exceeds max_len {max_len}")
        length = min(length, max_len)
    return length


def collate(
    examples: Sequence[Row],
    batch_size: int,
    pad_id: int,
    pad_to_multiple: int = 16,
    max_len: int | None = None,
) -> Batch:
    """Right-pad ``examples`` into a [batch_size, T] Batch.

    T is the longest example rounded up to ``pad_to_multiple`` (so jit-compiling backends see
    few distinct shapes), capped at ``max_len``. A short last micro-batch is filled with
    padding rows whose attention mask has a single 1 at position 0 and no labels: every row
    attends to something (a fully masked row gives NaN in some attention kernels) and the
    filler rows contribute no loss. When any item is a ``PackedRow`` the batch is packed:
    T is ``max_len`` (one shape for the whole run) and it carries segment and position ids.
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    if len(examples) > batch_size:
        raise ValueError(f"{len(examples)} examples do not fit a batch of {batch_size}")
    packed = any(isinstance(e, PackedRow) for e in examples)
    longest = max(len(e.input_ids) for e in examples)
    length = padded_length(longest, pad_to_multiple, max_len)
    if packed and max_len is not None:
        length = max_len
    input_ids = np.full((batch_size, length), pad_id, dtype=np.int32)
    attention_mask = np.zeros((batch_size, length), dtype=np.int32)
    labels = np.full((batch_size, length), IGNORE_INDEX, dtype=np.int32)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[row, :n] = ex.input_ids
        attention_mask[row, :n] = 1
        labels[row, :n] = np.where(ex.loss_mask, ex.input_ids, IGNORE_INDEX)
    attention_mask[len(examples) :, 0] = 1
    if not packed:
        return Batch(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    segment_ids, position_ids = segments_of([_lengths(e) for e in examples], batch_size, length)
    return Batch(input_ids, attention_mask, labels, segment_ids=segment_ids, position_ids=position_ids)


def _lengths(row: Row) -> list[int]:
    return row.lengths if isinstance(row, PackedRow) else [len(row.input_ids)]


def segments_of(row_lengths: Sequence[Sequence[int]], batch_size: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids (1, 2, ... per example of a row, 0 for padding) and positions restarting at
    each example, int32 [batch_size, length]. Padding is one more run of positions from 0, so a
    pad token attends to pad tokens only and never to a real one."""
    segment_ids = np.zeros((batch_size, length), np.int32)
    position_ids = np.zeros((batch_size, length), np.int32)
    for row in range(batch_size):
        lengths = list(row_lengths[row]) if row < len(row_lengths) else []
        start = 0
        for k, n in enumerate(lengths):
            segment_ids[row, start : start + n] = k + 1
            position_ids[row, start : start + n] = np.arange(n)
            start += n
        position_ids[row, start:] = np.arange(length - start)
    return segment_ids, position_ids


def pack(examples: Sequence[TokenizedExample], max_seq_len: int, max_rows: int | None = None) -> list[PackedRow]:
    """Place whole examples into rows of at most ``max_seq_len`` tokens, best fit: each goes to
    the open row with the least room that still holds it, else starts a new row. Deterministic
    in the examples' order (the seeded split's), so the rows are the same on every run and
    backend; examples keep their relative order inside a row. No example is ever split, and
    backends keep attention and positions per example (``collate``'s segment ids), so packing
    changes only speed, not the loss. With ``max_rows`` packing stops at the first example that
    would open one row more (the bench fills a fixed number of rows per step this way).
    """
    rows: list[list[TokenizedExample]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for ex in examples:
        n = len(ex.input_ids)
        if n > max_seq_len:
            raise ValueError(f"an example of {n} tokens exceeds max_seq_len {max_seq_len}; truncate first")
        i = bisect.bisect_left(free, (n, -1))
        if i == len(free):
            if max_rows is not None and len(rows) == max_rows:
                break
            rows.append([ex])
            room, index = max_seq_len - n, len(rows) - 1
        else:
            room, index = free.pop(i)
            rows[index].append(ex)
            room -= n
        if room > 0:
            bisect.insort(free, (room, index))
    return [PackedRow(tuple(r)) for r in rows]


def padding_fraction(batches: Sequence[Batch]) -> float:
    """Share of the batches' token slots that hold padding (for the bench and the docs)."""
    slots = sum(b.input_ids.size for b in batches)
    return 1.0 - sum(b.n_tokens for b in batches) / slots if slots else 0.0

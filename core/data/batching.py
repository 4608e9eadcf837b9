"""Epoch order, padding into micro-batches, and optional packing. Pure numpy.

The epoch order depends only on (seed, epoch), never on device count or backend, so every
backend trains on the same examples in the same order, and a resumed run can recompute the
order of the epoch it stopped in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from loraswitch.core.types import IGNORE_INDEX, Batch, TokenizedExample

_ORDER_STREAM = 0xE90C4  # keeps epoch orders independent of the split shuffle (dataset.py)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of range(n) that epoch ``epoch`` visits the training examples in."""
    return np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(n)


def collate(
    examples: Sequence[TokenizedExample],
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
    filler rows contribute no loss.
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    if len(examples) > batch_size:
        raise ValueError(f"{len(examples)} examples do not fit a batch of {batch_size}")
    longest = max(len(e.input_ids) for e in examples)
    length = -(-longest // pad_to_multiple) * pad_to_multiple if pad_to_multiple > 1 else longest
    if max_len is not None:
        if longest > max_len:
            raise ValueError(f"an example of {longest} tokens exceeds max_len {max_len}")
        length = min(length, max_len)
    input_ids = np.full((batch_size, length), pad_id, dtype=np.int32)
    attention_mask = np.zeros((batch_size, length), dtype=np.int32)
    labels = np.full((batch_size, length), IGNORE_INDEX, dtype=np.int32)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[row, :n] = ex.input_ids
        attention_mask[row, :n] = 1
        labels[row, :n] = np.where(ex.loss_mask, ex.input_ids, IGNORE_INDEX)
    attention_mask[len(examples) :, 0] = 1
    return Batch(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def pack(examples: Sequence[TokenizedExample], max_seq_len: int) -> list[TokenizedExample]:
    """Greedily concatenate consecutive examples into rows of at most ``max_seq_len`` tokens.

    Packing trades exactness for speed, as nanoGPT does: attention is *not* masked across
    example boundaries, so a packed example may attend to the one before it. Loss masks are
    kept, and the first token of every example in a row is not a target, so no example is
    trained to be predicted from the end of its neighbour. Order is preserved; an example
    that does not fit the current row starts a new one.
    """
    rows: list[TokenizedExample] = []
    ids: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    used = 0

    def flush() -> None:
        if ids:
            rows.append(TokenizedExample(np.concatenate(ids).astype(np.int32), np.concatenate(masks)))
            ids.clear()
            masks.clear()

    for ex in examples:
        n = len(ex.input_ids)
        if n > max_seq_len:
            raise ValueError(f"an example of {n} tokens exceeds max_seq_len {max_seq_len}; truncate first")
        if used + n > max_seq_len:
            flush()
            used = 0
        mask = np.array(ex.loss_mask, dtype=bool, copy=True)
        mask[0] = False
        ids.append(np.asarray(ex.input_ids, dtype=np.int32))
        masks.append(mask)
        used += n
    flush()
    return rows

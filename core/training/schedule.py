"""Accumulation windows and the learning-rate shape: decided here, obeyed by every backend.

A *step* is one optimizer update. An epoch's examples (in that epoch's shuffled order) are cut
into micro-batches of ``batch_size`` and the micro-batches into windows of
``accumulation_steps``; each window is one step. The epoch's last micro-batch may hold fewer
examples and its last window fewer micro-batches, so every example trains exactly once per
epoch and no step mixes two epochs (which keeps resume and the epoch count exact).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loraswitch.core.config import Config

# One window: the micro-batches of one optimizer step, each a range of positions in the epoch order.
Window = list[range]


def micro_batches(n_examples: int, batch_size: int) -> list[range]:
    """Positions ``[i*batch_size, (i+1)*batch_size)`` into the epoch order; the last may be short."""
    if n_examples <= 0 or batch_size <= 0:
        raise ValueError(f"need n_examples > 0 and batch_size > 0, got {n_examples}, {batch_size}")
    return [range(start, min(start + batch_size, n_examples)) for start in range(0, n_examples, batch_size)]


def plan_epoch(n_train_examples: int, batch_size: int, accumulation_steps: int) -> list[Window]:
    """The windows of one epoch, in order; together they cover ``range(n_train_examples)``
    exactly once (positions into that epoch's order, ``batching.epoch_order``)."""
    if accumulation_steps <= 0:
        raise ValueError(f"accumulation_steps must be > 0, got {accumulation_steps}")
    mbs = micro_batches(n_train_examples, batch_size)
    return [mbs[i : i + accumulation_steps] for i in range(0, len(mbs), accumulation_steps)]


def steps_per_epoch(n_train_examples: int, batch_size: int, accumulation_steps: int) -> int:
    return math.ceil(math.ceil(n_train_examples / batch_size) / accumulation_steps)


def total_steps(config: Config, n_examples: int) -> int:
    """The step budget: whichever of n_steps and n_epochs comes first (stop_eval_loss may end sooner)."""
    return min(
        config.n_steps, config.n_epochs * steps_per_epoch(n_examples, config.batch_size, config.accumulation_steps)
    )


def lr_shape(step: int, schedule: str, warmup_steps: int, n_steps: int) -> float:
    """Unit-peak shape at 0-based optimizer step ``step``, the same formulas as Hugging Face's
    ``get_{constant,linear,cosine}_schedule_with_warmup`` so runs compare with transformers ones:
    warmup ``step / warmup_steps`` (the first update has lr 0), then 1 (constant) or a linear /
    half-cosine decay reaching 0 at ``n_steps``."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, n_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        # clamped: HF's cosine rises again past n_steps, which a run extended on resume would hit
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))
    raise ValueError(f"lr_schedule: unknown shape {schedule!r}")


def lr_at(step: int, config: Config) -> float:
    """Learning rate of 0-based optimizer step ``step``: learning_rate_multiplier x shape(step)."""
    return config.learning_rate_multiplier * lr_shape(step, config.lr_schedule, config.warmup_steps, config.n_steps)

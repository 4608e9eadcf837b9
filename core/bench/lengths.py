"""Real-length bench data: examples of realistic lengths, and each system's micro-batches of them.

``loraswitch bench --lengths lognormal:MEDIAN:SIGMA:MIN:MAX`` replaces full ``seq_len`` rows of
random tokens by examples whose lengths are drawn from a log-normal distribution (median MEDIAN
tokens, log-space standard deviation SIGMA, rounded and clipped to [MIN, min(MAX, seq_len)]).
Chat fine-tuning data has this shape: a few hundred tokens per example with a long tail
(docs/benchmarks.md, "Real-length mode", gives the source of the default numbers).

Every system of one invocation trains on the same examples in the same steps: step i is the
examples ``[i*B*A, (i+1)*B*A)`` (B = batch_size, A = accumulation_steps). How they are laid
out is each system's business, and that is what is measured:

- ``padded_windows``: transformers' way (``DataCollatorWithPadding``, no ``pad_to_multiple_of``):
  A micro-batches of B examples, each padded to its own longest example;
- ``packed_windows``: loraswitch's ``packing: true``: the step's examples packed into rows of
  ``seq_len`` (core.data.batching.pack), B rows per micro-batch, as many micro-batches as the
  rows need (the last one holds only the rows left), with segment ids so attention stays inside
  each example.

Every token but an example's first is a target, so the target tokens of a step, and the loss
per target token, are the same for every system; pad never counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from loraswitch.core.data.batching import collate, pack
from loraswitch.core.types import Batch, TokenizedExample

if TYPE_CHECKING:
    from loraswitch.core.bench.protocol import BenchSettings

_LENGTH_STREAM = 0x1E76  # keeps the length draw apart from the token draws
Window = list[Batch]


def parse_lengths(text: str) -> tuple[float, float, int, int]:
    """``lognormal:MEDIAN:SIGMA:MIN:MAX`` -> (median, sigma, min, max); ValueError naming the rule."""
    parts = text.split(":")
    if len(parts) != 5 or parts[0] != "lognormal":
        raise ValueError("expected lognormal:MEDIAN:SIGMA:MIN:MAX, e.g. lognormal:400:0.9:32:2048")
    try:
        median, sigma, low, high = float(parts[1]), float(parts[2]), int(parts[3]), int(parts[4])
    except ValueError:
        raise ValueError("MEDIAN and SIGMA must be numbers, MIN and MAX integers") from None
    if not (median > 0 and sigma >= 0 and 2 <= low <= high):
        raise ValueError("need MEDIAN > 0, SIGMA >= 0 and 2 <= MIN <= MAX")
    return median, sigma, low, high


def example_lengths(settings: BenchSettings) -> np.ndarray:
    """int64 [steps * A * B]: the length of every example of the run, seeded by ``settings.seed``."""
    assert settings.lengths is not None
    median, sigma, low, high = parse_lengths(settings.lengths)
    n = (settings.warmup_steps + settings.steps) * settings.accumulation_steps * settings.batch_size
    draw = np.random.default_rng([settings.seed, _LENGTH_STREAM]).standard_normal(n)
    return np.clip(np.round(median * np.exp(sigma * draw)), low, min(high, settings.seq_len)).astype(np.int64)


def examples(settings: BenchSettings, vocab_size: int) -> list[TokenizedExample]:
    """Uniform random tokens at ``example_lengths``; example i draws from its own stream."""
    out = []
    for i, n in enumerate(example_lengths(settings)):
        ids = np.random.default_rng([settings.seed, _LENGTH_STREAM, i]).integers(0, vocab_size, int(n), dtype=np.int32)
        mask = np.ones(int(n), dtype=bool)
        mask[0] = False
        out.append(TokenizedExample(ids, mask))
    return out


def _step_examples(settings: BenchSettings, data: list[TokenizedExample], step: int) -> list[TokenizedExample]:
    per_step = settings.accumulation_steps * settings.batch_size
    return data[step * per_step : (step + 1) * per_step]


def padded_windows(settings: BenchSettings, data: list[TokenizedExample]) -> list[Window]:
    """Per step, A micro-batches of B examples, each padded to its own longest (transformers' collator)."""
    B, steps = settings.batch_size, settings.warmup_steps + settings.steps
    windows = []
    for step in range(steps):
        chunk = _step_examples(settings, data, step)
        windows.append([collate(chunk[j : j + B], B, 0, pad_to_multiple=1) for j in range(0, len(chunk), B)])
    return windows


def packed_windows(settings: BenchSettings, data: list[TokenizedExample]) -> list[Window]:
    """Per step, the step's examples packed into ``seq_len`` rows, B rows a micro-batch."""
    B, T, steps = settings.batch_size, settings.seq_len, settings.warmup_steps + settings.steps
    windows = []
    for step in range(steps):
        rows = pack(_step_examples(settings, data, step), T)
        # the last micro-batch holds only the rows left (no filler rows): at most B shapes [k, T]
        windows.append([collate(rows[j : j + B], len(rows[j : j + B]), 0, max_len=T) for j in range(0, len(rows), B)])
    return windows

"""Real-length bench data: examples of realistic lengths, and each system's micro-batches of them.

``loraswitch bench --lengths lognormal:MEDIAN:SIGMA:MIN:MAX`` replaces full ``seq_len`` rows of
random tokens by examples whose lengths are drawn from a log-normal distribution (median MEDIAN
tokens, log-space standard deviation SIGMA, rounded and clipped to [MIN, min(MAX, seq_len)]).
Chat fine-tuning data has this shape: a few hundred tokens per example with a long tail
(docs/benchmarks.md, "Real-length mode", gives the source of the default numbers).

Every system of one invocation trains on the same examples in the same optimizer steps. A step
holds as many examples of the seeded stream as fill A x B rows of ``seq_len`` when packed (B =
batch_size, A = accumulation_steps): what one step of ``packing: true`` trains on, so the packed
backends always see micro-batches of one shape [B, seq_len] (no recompilation). How the examples
are laid out is each system's business, and that is what is measured:

- ``padded_windows``: transformers' way (``DataCollatorWithPadding``, no ``pad_to_multiple_of``):
  the step's examples B at a time, each micro-batch padded to its own longest example (so
  hf-reference accumulates over more, smaller micro-batches: the same examples per step);
- ``packed_windows``: loraswitch's ``packing: true``: the step's examples packed into A x B rows
  (core.data.batching.pack), B rows per micro-batch, with segment ids so attention stays inside
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


def example_lengths(settings: BenchSettings, n: int) -> np.ndarray:
    """int64 [n]: the lengths of the stream's first ``n`` examples, seeded by ``settings.seed``."""
    assert settings.lengths is not None
    median, sigma, low, high = parse_lengths(settings.lengths)
    draw = np.random.default_rng([settings.seed, _LENGTH_STREAM]).standard_normal(n)
    return np.clip(np.round(median * np.exp(sigma * draw)), low, min(high, settings.seq_len)).astype(np.int64)


def _example(settings: BenchSettings, i: int, n: int, vocab_size: int) -> TokenizedExample:
    """Example ``i`` of the stream: ``n`` uniform random tokens from its own stream."""
    ids = np.random.default_rng([settings.seed, _LENGTH_STREAM, i]).integers(0, vocab_size, n, dtype=np.int32)
    mask = np.ones(n, dtype=bool)
    mask[0] = False
    return TokenizedExample(ids, mask)


def step_examples(settings: BenchSettings, vocab_size: int) -> list[list[TokenizedExample]]:
    """Each step's examples: the next ones of the stream that fill A x B packed rows."""
    rows_per_step = settings.accumulation_steps * settings.batch_size
    low = parse_lengths(settings.lengths or "")[2]
    # enough lengths for every step even if each example were the shortest possible
    n_max = (settings.warmup_steps + settings.steps) * rows_per_step * max(1, settings.seq_len // low)
    sizes = example_lengths(settings, n_max)
    # stand-ins of the right lengths (pack reads only lengths), made once: the tokens are drawn
    # only for the examples a step takes
    lengths_only = [TokenizedExample(np.empty(int(n), np.int32), np.ones(int(n), bool)) for n in sizes]
    steps, first = [], 0
    for _ in range(settings.warmup_steps + settings.steps):
        taken = sum(len(r.examples) for r in pack(lengths_only[first:], settings.seq_len, max_rows=rows_per_step))
        steps.append([_example(settings, i, int(sizes[i]), vocab_size) for i in range(first, first + taken)])
        first += taken
    return steps


def padded_windows(settings: BenchSettings, steps: list[list[TokenizedExample]]) -> list[Window]:
    """Per step, the step's examples B at a time, each micro-batch padded to its own longest
    (transformers' collator)."""
    B = settings.batch_size
    return [[collate(chunk[j : j + B], B, 0, pad_to_multiple=1) for j in range(0, len(chunk), B)] for chunk in steps]


def packed_windows(settings: BenchSettings, steps: list[list[TokenizedExample]]) -> list[Window]:
    """Per step, the step's examples packed into A x B rows of ``seq_len``, B rows a micro-batch."""
    B, T = settings.batch_size, settings.seq_len
    windows = []
    for chunk in steps:
        rows = pack(chunk, T)
        windows.append([collate(rows[j : j + B], B, 0, max_len=T) for j in range(0, len(rows), B)])
    return windows

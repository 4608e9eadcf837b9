"""Many prompts through a backend: in batches when the backend implements ``generate_batch``
(left padding, one KV cache; see core/backend.py), one at a time through ``generate`` otherwise,
so a plugin that only has ``generate`` keeps working.

Prompts are grouped by length before batching, so a batch pads little; the answers come back
in the caller's order. Greedy answers equal one-at-a-time generation (tests/backends/
test_batched_generation.py), so batching changes the time evaluate takes, not its numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_BATCH_SIZE = 16  # rows per generate_batch call (evaluate --generate_batch_size)


def generate_all(
    backend: Any,
    prompts: Sequence[list[int]],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_ids: tuple[int, ...] = (),
    pad_id: int = 0,
) -> list[list[int]]:
    """New token ids for every prompt, in the order of ``prompts``."""
    options: dict[str, Any] = dict(max_new_tokens=max_new_tokens, temperature=temperature, stop_ids=tuple(stop_ids))
    if temperature > 0:  # what greedy decoding ignores is passed only when sampling, as callers always did
        options.update(top_p=top_p, seed=seed)
    batched = getattr(backend, "generate_batch", None)
    if batched is None or batch_size <= 1:
        return [list(backend.generate(list(p), **options)) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for lo in range(0, len(order), batch_size):
        rows = order[lo : lo + batch_size]
        for i, new in zip(rows, batched([list(prompts[i]) for i in rows], pad_id=pad_id, **options), strict=True):
            out[i] = list(new)
    return out

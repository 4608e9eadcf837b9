"""Validation loss (token mean over target tokens) and exact-match of greedy generations.

Shared by the engine's periodic eval and ``loraswitch evaluate``, so both report the same number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from loraswitch.core.data.batching import collate
from loraswitch.core.training.schedule import micro_batches

if TYPE_CHECKING:
    from loraswitch.core.backend import Backend
    from loraswitch.core.data.chat_tokenizer import ChatTokenizer
    from loraswitch.core.data.jsonl import Record
    from loraswitch.core.types import TokenizedExample

PAD_TO_MULTIPLE = 16


def eval_loss(
    backend: Backend,
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    pad_id: int,
    max_len: int | None,
    max_batches: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    pad_to_multiple: int = PAD_TO_MULTIPLE,
) -> tuple[float, int] | None:
    """(token-mean loss, target tokens) over ``examples`` in their stored order, at most
    ``max_batches`` micro-batches; None if ``should_stop()`` turned true part way."""
    ranges = micro_batches(len(examples), batch_size)
    if max_batches is not None:
        ranges = ranges[:max_batches]
    total, n_targets = 0.0, 0
    for r in ranges:
        if should_stop():
            return None
        batch = collate([examples[i] for i in r], batch_size, pad_id, pad_to_multiple, max_len)
        loss_sum, n = backend.eval_loss(batch)
        total += float(loss_sum)
        n_targets += int(n)
    return (total / n_targets if n_targets else math.nan), n_targets


def answers_match(prediction: str, reference: str) -> bool:
    """The task metric: exact match, forgiving only surrounding whitespace (a trailing newline
    before the end-of-turn token is common). Strict on purpose: the quickstart task is following
    an output format, so a right answer wrapped in prose or a code fence counts as wrong."""
    return prediction.strip() == reference.strip()


def reference_pair(record: Record) -> tuple[list, str] | None:
    """(prompt messages, reference answer) for records with a prompt and an answer: the
    conversation before the last assistant turn, and that turn. Text records have none."""
    from loraswitch.core.data.jsonl import Message

    if record.kind == "completion":
        return [Message("user", record.prompt)], record.completion
    if record.kind == "chat":
        last = max(i for i, m in enumerate(record.messages) if m.role == "assistant")
        if last == 0:
            return None
        return list(record.messages[:last]), record.messages[last].content
    return None


def exact_match(
    backend: Backend,
    tokenizer: ChatTokenizer,
    records: Sequence[Record],
    *,
    max_new_tokens: int = 256,
    samples: list[dict] | None = None,
    n_samples: int = 2,
) -> tuple[float, int] | None:
    """Fraction of prompt/answer records whose greedy generation equals the reference
    (whitespace-stripped), and how many were scored; None if no record has a reference.
    The first ``n_samples`` (prompt, answer, reference) are appended to ``samples`` if given."""
    hits = scored = 0
    for record in records:
        pair = reference_pair(record)
        if pair is None:
            continue
        messages, reference = pair
        if record.kind == "completion" and not tokenizer.has_chat_template:
            prompt_ids = tokenizer.encode_prompt(record.prompt)
        else:
            prompt_ids = tokenizer.encode_prompt(messages)
        new_ids = backend.generate(
            prompt_ids, max_new_tokens=max_new_tokens, temperature=0.0, stop_ids=tokenizer.eos_ids
        )
        answer = tokenizer.decode(new_ids).strip()
        hits += int(answers_match(answer, reference))
        scored += 1
        if samples is not None and len(samples) < n_samples:
            samples.append({"prompt": messages[-1].content, "answer": answer, "reference": reference})
    return (hits / scored, scored) if scored else None

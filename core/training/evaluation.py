"""Validation loss (token mean over target tokens) and metrics of greedy generations.

Shared by the engine's periodic eval and ``loraswitch evaluate``, so both report the same number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from loraswitch.core.data.batching import collate
from loraswitch.core.training.generation import DEFAULT_BATCH_SIZE, generate_all
from loraswitch.core.training.schedule import micro_batches

if TYPE_CHECKING:
    from loraswitch.core.backend import Backend
    from loraswitch.core.data.chat_tokenizer import ChatTokenizer
    from loraswitch.core.data.records import Record
    from loraswitch.core.training.metrics import MetricInfo
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
    """The task metric: exact match, forgiving only surrounding whitespace (metrics.exact_match)."""
    return prediction.strip() == reference.strip()


def reference_pair(record: Record) -> tuple[list, str] | None:
    """(prompt messages, reference answer) for records with a prompt and an answer: the
    conversation before the last assistant turn, and that turn. Text records have none, nor
    do conversations whose last assistant turn calls tools (its text is the template's syntax)."""
    from loraswitch.core.data.records import Message

    if record.kind == "completion":
        return [Message("user", record.prompt)], record.completion
    if record.kind == "chat":
        last = max(i for i, m in enumerate(record.messages) if m.role == "assistant")
        if last == 0 or record.messages[last].tool_calls:
            return None
        return list(record.messages[:last]), record.messages[last].content
    return None


def generate_answers(
    backend: Backend,
    tokenizer: ChatTokenizer,
    records: Sequence[Record],
    *,
    max_new_tokens: int = 256,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[dict[str, Any]]:
    """Greedy answers to every record that has a reference (reference_pair), generated in
    batches (core/training/generation.py): one dict per example with its ``where``, ``prompt``
    (the last prompt message), ``prediction`` (stripped) and ``reference``."""
    rows, prompts = [], []
    for record in records:
        pair = reference_pair(record)
        if pair is None:
            continue
        messages, reference = pair
        if record.kind == "completion" and not tokenizer.has_chat_template:
            prompts.append(tokenizer.encode_prompt(record.prompt))
        else:
            prompts.append(tokenizer.encode_prompt(messages, tools=record.tools))
        rows.append({"where": record.where, "prompt": messages[-1].content, "reference": reference})
    answers = generate_all(
        backend,
        prompts,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        stop_ids=tokenizer.eos_ids,
        pad_id=tokenizer.pad_id,
    )
    for row, new_ids in zip(rows, answers, strict=True):
        row["prediction"] = tokenizer.decode(new_ids).strip()
    return rows


def score_answers(rows: list[dict[str, Any]], metrics: dict[str, MetricInfo]) -> dict[str, float]:
    """Adds each metric's value to every row (under the metric's name) and returns the means."""
    from loraswitch.core.training.metrics import score

    for row in rows:
        for name, info in metrics.items():
            row[name] = score(info, row["prediction"], row["reference"], row["where"])
    return {name: sum(r[name] for r in rows) / len(rows) for name in metrics} if rows else {}


def exact_match(
    backend: Backend,
    tokenizer: ChatTokenizer,
    records: Sequence[Record],
    *,
    max_new_tokens: int = 256,
    samples: list[dict] | None = None,
    n_samples: int = 2,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[float, int] | None:
    """Fraction of prompt/answer records whose greedy generation equals the reference
    (whitespace-stripped), and how many were scored; None if no record has a reference.
    The first ``n_samples`` (prompt, answer, reference) are appended to ``samples`` if given."""
    rows = generate_answers(backend, tokenizer, records, max_new_tokens=max_new_tokens, batch_size=batch_size)
    if samples is not None:
        for row in rows[: max(0, n_samples - len(samples))]:
            samples.append({"prompt": row["prompt"], "answer": row["prediction"], "reference": row["reference"]})
    if not rows:
        return None
    return sum(answers_match(r["prediction"], r["reference"]) for r in rows) / len(rows), len(rows)

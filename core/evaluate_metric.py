"""The task metric of ``loraswitch evaluate`` and the quickstart: exact match of the reply.

Strict on purpose: the quickstart task is following an output format exactly, so a reply that
is right in spirit but wrapped in prose or a code fence counts as wrong.
"""
from __future__ import annotations

from typing import Iterable


def normalize(text: str) -> str:
    """Only surrounding whitespace is forgiven (a trailing newline before <|im_end|> is common)."""
    return text.strip()


def exact_match(prediction: str, reference: str) -> bool:
    return normalize(prediction) == normalize(reference)


def exact_match_rate(predictions: Iterable[str], references: Iterable[str]) -> float:
    """Fraction of pairs that match exactly; raises ValueError when the lengths differ or are 0."""
    pairs = list(zip(predictions, references, strict=True))
    if not pairs:
        raise ValueError("exact_match_rate needs at least one prediction")
    return sum(exact_match(p, r) for p, r in pairs) / len(pairs)

"""eval_loss (core/training/evaluation.py): a token mean over every target of the validation
examples, not a mean of batch means, and at most max_batches batches."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loraswitch.core.training.evaluation import answers_match, eval_loss
from loraswitch.core.types import IGNORE_INDEX, TokenizedExample


class PerBatchLoss:
    """A backend whose per-token loss is 1.0 in the first eval batch, 2.0 in the second, ..."""

    def __init__(self):
        self.calls = []

    def eval_loss(self, batch):
        n = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
        self.calls.append(n)
        return float(len(self.calls)) * n, n


def example(n_tokens: int, n_targets: int) -> TokenizedExample:
    mask = np.zeros(n_tokens, bool)
    mask[n_tokens - n_targets :] = True
    return TokenizedExample(np.arange(n_tokens, dtype=np.int32), mask)


EXAMPLES = [example(8, 6), example(8, 6), example(4, 1), example(4, 1), example(6, 3)]


def test_loss_is_a_token_mean_over_all_batches():
    """Batches of 2: 12 targets at 1.0, 2 at 2.0, 3 at 3.0. The token mean is 25/17; a mean of
    batch means would be (1 + 2 + 3) / 3 = 2."""
    backend = PerBatchLoss()
    loss, n = eval_loss(backend, EXAMPLES, batch_size=2, pad_id=0, max_len=None)
    assert backend.calls == [12, 2, 3]
    assert (loss, n) == (pytest.approx(25 / 17, rel=1e-12), 17)


def test_max_batches_stops_after_that_many():
    backend = PerBatchLoss()
    loss, n = eval_loss(backend, EXAMPLES, batch_size=2, pad_id=0, max_len=None, max_batches=2)
    assert backend.calls == [12, 2] and (loss, n) == (pytest.approx(16 / 14, rel=1e-12), 14)


def test_should_stop_abandons_the_eval():
    polls = []
    result = eval_loss(
        PerBatchLoss(),
        EXAMPLES,
        batch_size=2,
        pad_id=0,
        max_len=None,
        should_stop=lambda: polls.append(1) or len(polls) == 2,
    )
    assert result is None and len(polls) == 2


def test_no_target_token_gives_nan():
    loss, n = eval_loss(PerBatchLoss(), [example(4, 0)], batch_size=2, pad_id=0, max_len=None)
    assert math.isnan(loss) and n == 0


def test_answers_match_forgives_only_surrounding_whitespace():
    assert answers_match(" 42\n", "42")
    assert not answers_match("42.", "42") and not answers_match("4 2", "42")

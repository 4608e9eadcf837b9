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


class Answers:
    """A backend whose greedy generation is the byte tokens of the next canned answer."""

    def __init__(self, answers: list[str]):
        self.answers = list(answers)
        self.prompts = []

    def generate(self, prompt_ids, max_new_tokens, temperature, stop_ids):
        self.prompts.append(list(prompt_ids))
        return list(self.answers.pop(0).encode())


def test_exact_match_scores_prompt_answer_records_only(tmp_path):
    from loraswitch.core.data.chat_tokenizer import ChatTokenizer
    from loraswitch.core.data.jsonl import parse_record
    from loraswitch.core.models.random_model import write_random_model
    from loraswitch.core.training.evaluation import exact_match, reference_pair

    tokenizer = ChatTokenizer.from_dir(write_random_model(tmp_path / "tiny", "tiny", with_weights=False))
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    records = [
        parse_record({"prompt": "1+1=", "completion": "2"}),
        parse_record({"text": "no reference"}),
        parse_record(chat),
        parse_record({"messages": [{"role": "assistant", "content": "only"}]}),
        parse_record({"prompt": "2+2=", "completion": "4"}),
    ]
    assert [reference_pair(r) is None for r in records] == [False, True, False, True, False]
    assert reference_pair(records[2])[1] == "b" and [m.content for m in reference_pair(records[2])[0]] == ["a"]
    backend, samples = Answers([" 2\n", "c", "5"]), []
    assert exact_match(backend, tokenizer, records, samples=samples) == (1 / 3, 3)
    assert backend.prompts[0] == tokenizer.encode_prompt("1+1=")
    assert samples == [
        {"prompt": "1+1=", "answer": "2", "reference": "2"},
        {"prompt": "a", "answer": "c", "reference": "b"},
    ]
    assert exact_match(Answers([]), tokenizer, [records[1], records[3]]) is None

"""Accumulation windows and the learning-rate shape (core/training/schedule.py)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraswitch.core.config import Config
from loraswitch.core.training.schedule import lr_at, lr_shape, micro_batches, plan_epoch, steps_per_epoch, total_steps


def test_short_last_micro_batch_and_window():
    windows = plan_epoch(n_train_examples=23, batch_size=4, accumulation_steps=4)
    # 23 examples -> 6 micro-batches (the last holds 3) -> windows of 4 and 2 micro-batches
    assert [len(w) for w in windows] == [4, 2]
    assert [len(r) for w in windows for r in w] == [4, 4, 4, 4, 4, 3]
    assert windows[-1][-1] == range(20, 23)
    assert steps_per_epoch(23, 4, 4) == 2


def test_exact_fit_has_no_empty_window():
    windows = plan_epoch(16, 4, 2)
    assert [len(w) for w in windows] == [2, 2]
    assert steps_per_epoch(16, 4, 2) == 2


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), bs=st.integers(1, 17), acc=st.integers(1, 9))
def test_windows_cover_each_position_once(n, bs, acc):
    windows = plan_epoch(n, bs, acc)
    positions = [i for w in windows for r in w for i in r]
    assert positions == list(range(n))
    assert len(windows) == steps_per_epoch(n, bs, acc)
    assert all(1 <= len(w) <= acc for w in windows)
    assert all(len(w) == acc for w in windows[:-1])
    assert all(1 <= len(r) <= bs for w in windows for r in w)


def test_bad_sizes_rejected():
    with pytest.raises(ValueError):
        micro_batches(0, 4)
    with pytest.raises(ValueError):
        plan_epoch(10, 4, 0)


def test_total_steps_is_the_smaller_budget():
    c = Config(n_steps=100, n_epochs=3, batch_size=4, accumulation_steps=2)
    assert total_steps(c, 40) == 15  # 10 micro-batches -> 5 steps/epoch x 3
    c = Config(n_steps=7, n_epochs=3, batch_size=4, accumulation_steps=2)
    assert total_steps(c, 40) == 7


def test_constant_is_flat_and_scaled():
    c = Config(learning_rate_multiplier=3e-4)
    assert [lr_at(s, c) for s in (0, 1, 499)] == [3e-4] * 3


# Values of transformers' get_{linear,cosine,constant}_schedule_with_warmup lambdas
# (warmup 4, 10 training steps), written out so this test needs no torch.
@pytest.mark.parametrize(
    "schedule,expected",
    [
        ("linear", [0.0, 0.25, 0.5, 0.75, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0, 0.0]),
        ("cosine", [0.0, 0.25, 0.5, 0.75, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(1, 7)] + [0.0]),
        ("constant", [0.0, 0.25, 0.5, 0.75] + [1.0] * 8),
    ],
)
def test_warmup_and_decay_match_hugging_face(schedule, expected):
    got = [lr_shape(s, schedule, warmup_steps=4, n_steps=10) for s in range(12)]
    assert got == pytest.approx(expected, abs=1e-12)


def test_cosine_without_warmup_peaks_at_step_zero_and_halves_midway():
    assert lr_shape(0, "cosine", 0, 100) == 1.0
    assert lr_shape(50, "cosine", 0, 100) == pytest.approx(0.5)
    assert lr_shape(100, "cosine", 0, 100) == pytest.approx(0.0, abs=1e-12)


def test_lr_at_uses_the_config():
    c = Config(learning_rate_multiplier=1e-3, lr_schedule="linear", warmup_steps=2, n_steps=6)
    assert lr_at(1, c) == pytest.approx(0.5e-3)
    assert lr_at(4, c) == pytest.approx(0.5e-3)

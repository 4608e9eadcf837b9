"""Property tests (hypothesis) for what every backend and every resumed run must agree on:
the train/validation split, the epoch order, the accumulation windows and the stop logic."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraswitch.core.config import resolve
from loraswitch.core.data.batching import epoch_order
from loraswitch.core.data.dataset import load_datasets, split_indices
from loraswitch.core.training.schedule import micro_batches, plan_epoch, steps_per_epoch, total_steps
from loraswitch.core.training.state import TrainerState
from loraswitch.core.training.stopping import limit_reached

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

sizes = st.integers(min_value=1, max_value=300)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
splits = st.floats(min_value=0.01, max_value=0.99)


# ---------------------------------------------------------------- the split


@FAST
@given(n=st.integers(min_value=2, max_value=500), split=splits, seed=seeds)
def test_split_is_disjoint_complete_and_deterministic(n, split, seed):
    train, val = split_indices(n, split, seed)
    assert len(set(train.tolist()) & set(val.tolist())) == 0
    assert sorted(train.tolist() + val.tolist()) == list(range(n))
    assert len(train) == min(max(round(n * split), 1), n - 1) and len(val) >= 1
    again = split_indices(n, split, seed)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])


@FAST
@given(n=st.integers(min_value=2, max_value=200), seed=seeds, a=splits, b=splits)
def test_split_is_one_shuffle_cut_at_the_fraction(n, seed, a, b):
    """Two fractions cut the same shuffled order: the smaller training side is a prefix of the
    larger one, so raising training_split only moves examples from validation to training."""
    small, large = sorted((a, b))
    t_small, _ = split_indices(n, small, seed)
    t_large, _ = split_indices(n, large, seed)
    assert t_large[: len(t_small)].tolist() == t_small.tolist()


def test_split_is_pinned():
    """Changing the split's random stream would silently change what old runs resume on."""
    train, val = split_indices(10, 0.8, 0)
    assert (train.tolist(), val.tolist()) == GOLDEN_SPLIT


GOLDEN_SPLIT = ([0, 9, 3, 8, 5, 6, 2, 4], [7, 1])


@pytest.fixture
def tokenizer(tmp_path_factory, monkeypatch):
    for key in [k for k in os.environ if k.startswith("LORASWITCH_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LORASWITCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    from loraswitch.core.data.chat_tokenizer import ChatTokenizer
    from loraswitch.core.models.sources import resolve_model
    from loraswitch.core.plugins import reset_plugin_manager

    reset_plugin_manager()
    yield ChatTokenizer.from_dir(resolve_model("random:tiny").path)
    reset_plugin_manager()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(min_value=2, max_value=40),
    split=splits,
    seed=st.integers(0, 1000),
    max_seq_len=st.integers(min_value=32, max_value=512),
)
def test_split_does_not_depend_on_backend_or_sequence_length(tmp_path_factory, tokenizer, n, split, seed, max_seq_len):
    """The same records land on the same side for every backend and max_seq_len."""
    data = tmp_path_factory.mktemp("split") / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(n)))
    sides = set()
    for backend, length in (("torch", max_seq_len), ("jax", 1024), ("numpy", 32)):
        config = resolve(
            None, dict(backend=backend, data=str(data), training_split=split, seed=seed, max_seq_len=length), environ={}
        )
        d = load_datasets(config, tokenizer)
        # the completion tokens ("aN") identify the record; every example fits in 32 tokens
        sides.add(
            tuple(
                tuple(tokenizer.decode(e.input_ids[e.loss_mask].tolist()) for e in side)
                for side in (d.train, d.validation)
            )
        )
    assert len(sides) == 1


# ---------------------------------------------------------------- epoch order and windows


@FAST
@given(n=sizes, seed=seeds, epoch=st.integers(min_value=0, max_value=10_000))
def test_epoch_order_is_a_seeded_permutation(n, seed, epoch):
    order = epoch_order(n, seed, epoch)
    assert sorted(order.tolist()) == list(range(n))
    assert np.array_equal(order, epoch_order(n, seed, epoch))


@FAST
@given(n=st.integers(min_value=12, max_value=300), seed=seeds)
def test_epochs_are_shuffled_differently(n, seed):
    assert not np.array_equal(epoch_order(n, seed, 0), epoch_order(n, seed, 1))


@FAST
@given(n=sizes, batch_size=st.integers(1, 16), accumulation=st.integers(1, 16), seed=seeds, epoch=st.integers(0, 50))
def test_windows_cover_the_epoch_exactly(n, batch_size, accumulation, seed, epoch):
    windows = plan_epoch(n, batch_size, accumulation)
    assert len(windows) == steps_per_epoch(n, batch_size, accumulation)
    positions = [i for w in windows for r in w for i in r]
    assert positions == list(range(n))  # in order, each position once
    order = epoch_order(n, seed, epoch)
    assert sorted(order[positions].tolist()) == list(range(n))  # every example exactly once per epoch
    for k, window in enumerate(windows):
        assert 1 <= len(window) <= accumulation
        if k < len(windows) - 1:
            assert len(window) == accumulation  # only the epoch's last window may be short
        assert all(1 <= len(r) <= batch_size for r in window)
    batches = [r for w in windows for r in w]
    assert all(len(r) == batch_size for r in batches[:-1])
    assert batches == micro_batches(n, batch_size)


# ---------------------------------------------------------------- stop logic


@FAST
@given(
    n=st.integers(1, 120),
    batch_size=st.integers(1, 8),
    accumulation=st.integers(1, 8),
    n_steps=st.integers(1, 200),
    n_epochs=st.integers(1, 20),
)
def test_first_of_n_steps_and_n_epochs_decides(n, batch_size, accumulation, n_steps, n_epochs):
    """Walk the engine's state machine (one window per step, the epoch advancing when its
    windows run out) until limit_reached fires: the step count is the smaller budget."""
    config = resolve(
        None,
        dict(batch_size=batch_size, accumulation_steps=accumulation, n_steps=n_steps, n_epochs=n_epochs),
        environ={},
    )
    per_epoch = len(plan_epoch(n, batch_size, accumulation))
    state, seen = TrainerState(), []
    while (reason := limit_reached(state, config)) is None:
        seen.append((state.epoch, state.window))
        state.step += 1
        state.window += 1
        if state.window == per_epoch:
            state.epoch, state.window = state.epoch + 1, 0
    assert state.step == total_steps(config, n) == min(n_steps, n_epochs * per_epoch)
    assert reason == ("n_steps" if n_steps <= n_epochs * per_epoch else "n_epochs")
    assert len(set(seen)) == len(seen)  # no window trained twice
    if reason == "n_epochs":
        assert state.epoch == n_epochs and state.window == 0

"""limit_reached (core/training/stopping.py): a budget counts as reached once the state is at or
past it. Past it happens for real: a run resumed with --n_steps lower than its step stops at once
(a mutation run showed that `==` and `is` in place of `>=` survived the walk in test_properties)."""

from __future__ import annotations

import pytest

from loraswitch.core.config import Config
from loraswitch.core.training.state import TrainerState
from loraswitch.core.training.stopping import StopReason, limit_reached


@pytest.mark.parametrize(
    "step, epoch, expected",
    [
        (999, 2, None),
        (1000, 0, StopReason.N_STEPS),  # 1000 is not a cached int: `is` would miss it
        (1500, 0, StopReason.N_STEPS),  # past the budget (resumed with a lower n_steps)
        (10, 1000, StopReason.N_EPOCHS),
        (10, 1200, StopReason.N_EPOCHS),
        (1000, 1000, StopReason.N_STEPS),  # both reached: n_steps is named
    ],
)
def test_a_budget_is_reached_at_or_past_it(step, epoch, expected):
    config = Config(n_steps=int("1000"), n_epochs=int("1000"))
    assert limit_reached(TrainerState(step=step, epoch=epoch), config) is expected

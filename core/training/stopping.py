"""Why a run ended: the five stop reasons, one ``StrEnum`` used everywhere (the engine, the
commands' exit codes, summary.json, the tests), and the step-budget rule."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loraswitch.core.config import Config
    from loraswitch.core.training.state import TrainerState


class StopReason(StrEnum):
    """Recorded as ``stop_reason`` in summary.json; the value is what the file holds."""

    N_STEPS = "n_steps"  # n_steps optimizer updates are done
    N_EPOCHS = "n_epochs"  # n_epochs passes over the training split are done
    STOP_EVAL_LOSS = "stop_eval_loss"  # an eval loss fell below stop_eval_loss
    NON_FINITE_LOSS = "non_finite_loss"  # a step's (or an eval's) loss was NaN or infinite
    INTERRUPTED = "interrupted"  # SIGINT/SIGTERM: checkpoint written, resumable


def limit_reached(state: TrainerState, config: Config) -> StopReason | None:
    """The step budget: whichever of n_steps and n_epochs is reached first."""
    if state.step >= config.n_steps:
        return StopReason.N_STEPS
    if state.epoch >= config.n_epochs:
        return StopReason.N_EPOCHS
    return None

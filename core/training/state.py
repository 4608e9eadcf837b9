"""Where the loop is, saved as trainer_state.json in every checkpoint, and the checks that a
checkpoint can continue this run (same model, data and epoch plan; any backend)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.rundir.names import TRAINER_STATE

STATE_VERSION = 1


@dataclass
class TrainerState:
    """The loop's position; everything else a resumed run needs is a function of the config."""

    step: int = 0  # completed optimizer updates
    epoch: int = 0  # the epoch the next window belongs to
    window: int = 0  # index of the next window inside that epoch
    tokens: int = 0  # real (unpadded) training tokens seen
    elapsed_s: float = 0.0  # training wall time, summed over resumed sessions
    train_loss: float | None = None  # loss of the last completed step
    eval_loss: float | None = None  # last eval loss
    eval_step: int | None = None  # the step that eval was run at

    def epoch_progress(self, windows_per_epoch: int) -> float:
        return self.epoch + self.window / windows_per_epoch

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TrainerState:
        return cls(**{f.name: saved[f.name] for f in fields(cls)})

    def to_saved(self, **identity: Any) -> dict[str, Any]:
        """trainer_state.json's content (the checkpoint writer adds the file list)."""
        return dict(asdict(self), version=STATE_VERSION, **identity)


def check_checkpoint_matches(
    saved: dict[str, Any], identity: dict[str, Any], checkpoint: Path, windows_per_epoch: int
) -> None:
    """A checkpoint from another model or data set cannot continue this run. ``identity`` holds
    the model and the data files' sha256, which must be equal, and the backend, which may differ:
    every backend reads the others' adapter and AdamW state (core/adapters/)."""
    where = checkpoint / TRAINER_STATE
    if saved.get("version") != STATE_VERSION:
        raise UserError(f"{where}: trainer state version {saved.get('version')!r}, expected {STATE_VERSION}")
    if saved.get("model") != identity["model"]:
        raise UserError(
            f"{where}: checkpoint was written by model {saved.get('model')!r}, but the run uses "
            f"{identity['model']!r}; resume with the same model"
        )
    if saved.get("data_sha256") != identity["data_sha256"]:
        raise UserError(
            f"{where}: the data files changed since this checkpoint was written; resuming would "
            "not continue the same run (restore the data or start a new run)"
        )
    _check_fields(saved, where)
    if saved["window"] >= windows_per_epoch:
        raise UserError(f"{where}: window = {saved['window']} but an epoch of this run has {windows_per_epoch} windows")


def _check_fields(saved: dict[str, Any], where: Path) -> None:
    missing = [f.name for f in fields(TrainerState) if f.name not in saved]
    if missing:
        raise UserError(f"{where}: missing keys {', '.join(missing)}")
    for key in ("step", "epoch", "window", "tokens"):
        if not isinstance(saved[key], int) or isinstance(saved[key], bool) or saved[key] < 0:
            raise UserError(f"{where}: {key} = {saved[key]!r}: must be a non-negative integer")
    for key in ("elapsed_s", "train_loss", "eval_loss"):
        if not (isinstance(saved[key], (int, float)) or (saved[key] is None and key != "elapsed_s")):
            raise UserError(f"{where}: {key} = {saved[key]!r}: must be a number")
    if saved["eval_step"] is not None and not isinstance(saved["eval_step"], int):
        raise UserError(f"{where}: eval_step = {saved['eval_step']!r}: must be an integer or null")

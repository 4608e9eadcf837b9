"""The plain data that crosses from the core to backends and plugins: numpy arrays and
dataclasses, no framework types. ``TokenizedExample`` and ``Batch`` carry data, ``MicroStep`` is
one forward/backward the engine asks for, ``ModelSource`` says what model to load, and
``RunContext`` is what observer plugins are told about the run in progress."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from loraswitch.core.config import Config

IGNORE_INDEX = -100  # label value for tokens that carry no loss (prompt, padding), as in HF


@dataclass(frozen=True)
class TokenizedExample:
    """One example after tokenisation. ``loss_mask[i]`` is True when token i is a target
    (an assistant/completion token); token 0 is never a target."""

    input_ids: np.ndarray  # int32 [T]
    loss_mask: np.ndarray  # bool  [T]

    @property
    def n_targets(self) -> int:
        return int(self.loss_mask[1:].sum())


@dataclass(frozen=True)
class Batch:
    """A padded micro-batch, Hugging Face conventions: labels are *not* shifted; the loss at
    position i predicts labels[i] from tokens < i, so targets are ``labels[:, 1:] != -100``.
    Padding is on the right. Rows added to fill the last micro-batch have no targets.

    A *packed* batch (``packing: true``) holds several examples per row and says where each
    starts: ``segment_ids`` numbers the examples of a row 1, 2, ... (0 = padding) and
    ``position_ids`` restarts at 0 with every example. A backend must then let a token attend
    only to earlier tokens of its own segment and use ``position_ids`` for rope, so each
    example computes exactly what it would alone. Both are None for one example per row."""

    input_ids: np.ndarray  # int32 [B, T]
    attention_mask: np.ndarray  # int32 [B, T], 1 = real token
    labels: np.ndarray  # int32 [B, T], IGNORE_INDEX where no loss
    segment_ids: np.ndarray | None = None  # int32 [B, T]: example number in its row, 0 = padding
    position_ids: np.ndarray | None = None  # int32 [B, T]: position inside its example

    @property
    def packed(self) -> bool:
        return self.segment_ids is not None

    @property
    def n_targets(self) -> int:
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass(frozen=True)
class MicroStep:
    """One forward/backward the core asks a backend to run.

    The backend adds ``weight * sum(token cross-entropy over targets)`` to the gradient
    accumulator, so that summed over the window the gradient is that of the token mean over the
    whole accumulation window (``weight = 1 / targets in the window``). When ``apply_update``
    is True this is the window's last micro-batch: apply the optimizer with learning rate ``lr``
    and zero the accumulator. ``step`` is the optimizer step this micro-batch belongs to
    (0-based) and ``micro`` its index inside the window; with the run seed they give a
    stateless dropout key, so resume replays identical randomness.
    """

    batch: Batch
    weight: float
    apply_update: bool
    lr: float
    step: int
    micro: int
    window_size: int  # micro-batches in this window (the last window of an epoch may be shorter)


@dataclass(frozen=True)
class ModelSource:
    """A resolved model source.

    ``path`` holds config.json, tokenizer.json and tokenizer_config.json (with the chat
    template). It holds *.safetensors weights unless ``random_init`` is True, in which case the
    backend initialises random weights of that config itself, seeded by ``init_seed`` (used for
    large benchmark shapes that are not worth writing to disk).
    """

    name: str
    path: Path
    random_init: bool = False
    init_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        from loraswitch.core.files.json_file import read_json_object

        return read_json_object(self.path / "config.json")


@dataclass
class RunContext:
    """Shared, read-only for plugins: the resolved config, where the run directory is, and the
    step budget (for progress bars and ETAs)."""

    config: Config
    run_dir: Path
    backend: str
    total_steps: int  # min(n_steps, n_epochs x steps_per_epoch)
    steps_per_epoch: int
    start_step: int = 0  # > 0 when resumed
    resumed: bool = False
    quiet: bool = False  # no progress bar (tests, --quiet)
    info: dict[str, Any] = field(default_factory=dict)  # backend.describe(), dataset stats

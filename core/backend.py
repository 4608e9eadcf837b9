"""The backend interface, as a Protocol: backends satisfy it without inheriting.

The engine owns the loop, the data order, accumulation windows, learning rate and stopping;
a backend owns the framework: model, LoRA, gradients, optimizer, devices.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from loraswitch.core.config import Config
    from loraswitch.core.types import Batch, MicroStep, ModelSource


class LossValue(Protocol):
    """What ``micro_step`` returns: a scalar the engine converts with ``float()`` only at the end
    of a window, so a backend may return a device value and avoid a host sync per micro-step."""

    def __float__(self) -> float: ...


@runtime_checkable
class Backend(Protocol):
    name: str

    def load(self, model: ModelSource, config: Config, *, train: bool = True) -> None:
        """Load base weights from ``model``, freeze them, add LoRA (config.lora_r, lora_alpha,
        lora_dropout, lora_target_modules, use_rslora) initialised with the core's
        ``initial_adapter`` and, if ``train``, build the AdamW optimizer (``ADAMW_BETAS``,
        ``ADAMW_EPS``, config.weight_decay) over the LoRA parameters only, which stay fp32 under
        bf16. Unknown target module names, unsupported architectures and shape mismatches raise
        ``UserError`` naming the file or key."""

    def micro_step(self, micro: MicroStep) -> LossValue:
        """Forward + backward one micro-batch with loss weight ``micro.weight``; on
        ``micro.apply_update`` apply AdamW at ``micro.lr`` and reset the accumulator.
        Returns this micro-batch's contribution ``weight * loss_sum`` (the window's loss is
        the sum of the contributions). Dropout masks: the core's portable masks keyed by
        (config.seed, micro.step, micro.micro), or with ``dropout_masks: framework`` the
        framework's generator, stateless in the same numbers. With ``packing: true`` the batch
        is packed (``micro.batch.packed``): attention must stay inside each ``segment_ids``
        segment and rope must use ``position_ids`` (core/types.py, docs/packing.md)."""

    def eval_loss(self, batch: Batch) -> tuple[float, int]:
        """Sum of target-token cross-entropy and the number of target tokens, no dropout."""

    def logits(self, batch: Batch) -> Any:
        """fp32 numpy logits [B, T, V] for the batch, LoRA applied, no dropout (parity tests)."""

    def generate(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop_ids: tuple[int, ...] = (),
    ) -> list[int]:
        """New token ids after ``prompt_ids``: greedy when temperature is 0, else sampled."""

    # Optional: ``generate_batch`` (see ``BatchGeneration``); without it the core loops over ``generate``.

    def save_adapter(self, directory: Path) -> None:
        """Write the adapter in PEFT format: adapter_config.json + adapter_model.safetensors
        (keys ``base_model.model.<module path>.lora_A.weight`` [r, in], ``lora_B.weight`` [out, r])."""

    def load_adapter(self, directory: Path) -> None:
        """Load a PEFT-format adapter (from any backend) into the LoRA layers."""

    def save_state(self, directory: Path) -> None:
        """Write the AdamW state in the core's portable format (``write_optimizer_state``), plus
        any state of the backend's own, as safetensors + JSON only."""

    def load_state(self, directory: Path) -> None:
        """Restore the portable AdamW state, whichever backend wrote it; a mismatch raises
        ``UserError`` naming the file. Files of the backend's own are optional."""

    def describe(self) -> dict[str, Any]:
        """Facts for summary.json and the bench: framework/version, device, precision,
        params_total, params_trainable."""


@runtime_checkable
class BatchGeneration(Protocol):
    """What a backend may add to ``Backend`` for fast evaluation: several prompts at once.
    ``evaluate`` and the quickstart call it through ``core.training.generation.generate_all``,
    which falls back to one ``generate`` per prompt for a backend without it."""

    def generate_batch(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop_ids: tuple[int, ...] = (),
        pad_id: int = 0,
    ) -> list[list[int]]:
        """For each prompt, what ``generate(prompt, ...)`` returns for it alone (greedy: the same
        tokens; sampled: each row drawing as it would alone with ``seed``). ``pad_id`` fills the
        left padding and the slots of finished rows; it is never returned."""

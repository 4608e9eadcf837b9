"""Qwen2 / Qwen2.5 and Qwen3 (dense): a Llama block plus their differences.

- Qwen2 (and Qwen2.5, the same architecture): biases on q, k and v (always; there is no config
  key), and sliding-window attention on layers ``max_window_layers`` and up when
  ``use_sliding_window`` is true (released checkpoints set it false).
- Qwen3: RMSNorm over head_dim on every q and k head before rope, head_dim explicit (128 when
  absent), no biases unless ``attention_bias`` (then on q, k, v and o), the same sliding rule.

Both read ``layer_types`` when config.json has it (transformers 5 writes it) and otherwise compute
it as transformers' Qwen2Config / Qwen3Config do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.models.config_fields import positive_int
from loraswitch.core.models.families.family import Family
from loraswitch.core.models.families.spec import (
    FULL_ATTENTION,
    SLIDING_ATTENTION,
    layer_windows_from_types,
    optional_window,
)


def _windows(config: dict[str, Any], file: Path, layers: int) -> tuple[int | None, ...]:
    window = optional_window(config, file) if config.get("use_sliding_window", False) else None
    first_sliding = config.get("max_window_layers", 28)
    if not isinstance(first_sliding, int) or isinstance(first_sliding, bool) or first_sliding < 0:
        raise UserError(f"{file}: key 'max_window_layers' must be a non-negative integer, got {first_sliding!r}")
    default = [
        SLIDING_ATTENTION if window is not None and i >= first_sliding else FULL_ATTENTION for i in range(layers)
    ]
    return layer_windows_from_types(config, file, layers, window, default)


def _qwen2(config: dict[str, Any], file: Path, layers: int) -> dict[str, Any]:
    return {"biased": ("q_proj", "k_proj", "v_proj"), "layer_windows": _windows(config, file, layers)}


def _qwen3(config: dict[str, Any], file: Path, layers: int) -> dict[str, Any]:
    biased = ("q_proj", "k_proj", "v_proj", "o_proj") if config.get("attention_bias") else ()
    return {
        "head_dim": positive_int(config, "head_dim", file, 128),
        "biased": biased,
        "qk_norm": True,
        "layer_windows": _windows(config, file, layers),
    }


QWEN2 = Family("Qwen2ForCausalLM", "qwen2", "Qwen2 / Qwen2.5", _qwen2, chat_template="qwen2_5.jinja")
QWEN3 = Family("Qwen3ForCausalLM", "qwen3", "Qwen3", _qwen3, chat_template="qwen3.jinja")

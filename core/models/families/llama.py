"""Llama (Llama 2/3.x, SmolLM2, TinyLlama...) and Mistral: the families every other one is
described against. Mistral is a Llama whose ``sliding_window`` (if set) applies to every layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.models.config_fields import boolean
from loraswitch.core.models.families.family import Family
from loraswitch.core.models.families.spec import optional_window

_BIAS_KEYS = {
    "attention_bias": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp_bias": ("gate_proj", "up_proj", "down_proj"),
}


def _llama(config: dict[str, Any], file: Path, layers: int) -> dict[str, Any]:
    for key in _BIAS_KEYS:
        if boolean(config, key, file, False):
            raise UserError(f"{file}: {key} = true is not supported (Llama-family layers have no biases)")
    return {}


def _mistral(config: dict[str, Any], file: Path, layers: int) -> dict[str, Any]:
    return {**_llama(config, file, layers), "layer_windows": (optional_window(config, file),) * layers}


LLAMA = Family("LlamaForCausalLM", "llama", "Llama", _llama)
MISTRAL = Family("MistralForCausalLM", "mistral", "Mistral", _mistral)

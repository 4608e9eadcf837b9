"""Gemma 2 and Gemma 3 (text, the 1B layout): a Llama block plus their differences.

Both: RMSNorm scaling by (1 + weight) in fp32, embeddings multiplied by sqrt(hidden_size),
GeGLU (GELU's tanh approximation), norms before *and* after attention and the MLP, the attention
scale query_pre_attn_scalar ** -0.5, tied embeddings, and sliding-window layers interleaved with
global ones (``layer_types``; absent: transformers' default pattern).

- Gemma 2: soft-capping of attention scores (``attn_logit_softcapping``) and of the output
  logits (``final_logit_softcapping``); every other layer slides (0, 2, 4... as transformers).
- Gemma 3: RMSNorm (1 + weight) on every q and k head; five sliding layers then one global
  (``sliding_window_pattern`` 6); the sliding layers rotate with their own rope base
  (``rope_local_base_freq``, or ``rope_parameters.sliding_attention`` as transformers 5 writes
  it); no soft-capping in transformers' Gemma 3 attention (a set ``attn_logit_softcapping`` is
  ignored there, and refused here rather than silently ignored).

The larger Gemma 3 checkpoints (4B and up) are ``Gemma3ForConditionalGeneration`` (vision +
text) and refused by the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.models.config_fields import boolean, object_or_null, positive_int, positive_number
from loraswitch.core.models.families.family import Family
from loraswitch.core.models.families.spec import (
    FULL_ATTENTION,
    SLIDING_ATTENTION,
    RopeSpec,
    layer_windows_from_types,
    optional_window,
    parse_rope,
)


def _optional_cap(config: dict[str, Any], key: str, file: Path) -> float | None:
    return None if config.get(key) is None else positive_number(config, key, file)


def _windows(config: dict[str, Any], file: Path, layers: int, pattern: int) -> tuple[int | None, ...]:
    window = optional_window(config, file)
    default = [SLIDING_ATTENTION if (i + 1) % pattern else FULL_ATTENTION for i in range(layers)]
    return layer_windows_from_types(config, file, layers, window, default)


def _shared(config: dict[str, Any], file: Path, layers: int, pattern: int) -> dict[str, Any]:
    if boolean(config, "use_bidirectional_attention", file, False):
        raise UserError(f"{file}: use_bidirectional_attention = true is not supported (loraswitch trains causal LMs)")
    if boolean(config, "attention_bias", file, False):
        raise UserError(f"{file}: attention_bias = true is not supported (Gemma layers have no biases)")
    activation = config.get("hidden_activation", config.get("hidden_act", "gelu_pytorch_tanh"))
    if activation != "gelu_pytorch_tanh":
        raise UserError(f"{file}: hidden_activation {activation!r} is not supported (Gemma uses gelu_pytorch_tanh)")
    head_dim = positive_int(config, "head_dim", file, 256)
    return {
        "head_dim": head_dim,
        "hidden_act": "gelu_pytorch_tanh",
        "tie_word_embeddings": boolean(config, "tie_word_embeddings", file, True),
        "norm_offset": 1.0,
        "embed_scale": True,
        "sandwich_norms": True,
        "attention_scale": positive_number(config, "query_pre_attn_scalar", file, 256) ** -0.5,
        "layer_windows": _windows(config, file, layers, pattern),
    }


def _gemma2(config: dict[str, Any], file: Path, layers: int) -> dict[str, Any]:
    return {
        **_shared(config, file, layers, pattern=2),
        "attn_softcap": _optional_cap(config, "attn_logit_softcapping", file),
        "final_softcap": _optional_cap(config, "final_logit_softcapping", file),
    }


def _gemma3_ropes(config: dict[str, Any], file: Path) -> tuple[RopeSpec, RopeSpec]:
    """(global, local) rope: transformers 5's ``rope_parameters`` keyed by layer type, or the
    released config.json's ``rope_theta`` / ``rope_scaling`` (global) and ``rope_local_base_freq``."""
    params = object_or_null(config, "rope_parameters", file)
    if FULL_ATTENTION in params or SLIDING_ATTENTION in params:
        full = {"rope_theta": 1_000_000.0, **object_or_null(params, FULL_ATTENTION, file)}
        local = {"rope_theta": 10_000.0, **object_or_null(params, SLIDING_ATTENTION, file)}
    else:
        full = {**object_or_null(config, "rope_scaling", file), **params}
        full.setdefault("rope_theta", config.get("rope_theta", 1_000_000.0))
        local = {"rope_theta": config.get("rope_local_base_freq", 10_000.0)}
    return parse_rope(config, file, full), parse_rope(config, file, local)


def _gemma3(config: dict[str, Any], file: Path, layers: int) -> dict[str, Any]:
    if config.get("attn_logit_softcapping") is not None:
        raise UserError(
            f"{file}: attn_logit_softcapping is set, but transformers' Gemma 3 attention ignores it; "
            "set it to null (Gemma 3 does not soft-cap attention)"
        )
    pattern = positive_int(config, "sliding_window_pattern", file, 6)
    rope, local_rope = _gemma3_ropes(config, file)
    return {
        **_shared(config, file, layers, pattern=pattern),
        "qk_norm": True,
        "final_softcap": _optional_cap(config, "final_logit_softcapping", file),
        "rope": rope,
        "local_rope": local_rope,
    }


_TURNS = ("<start_of_turn>", "<end_of_turn>")
GEMMA2 = Family("Gemma2ForCausalLM", "gemma2", "Gemma 2", _gemma2, chat_template="gemma.jinja", special_tokens=_TURNS)
GEMMA3 = Family(
    "Gemma3ForCausalLM", "gemma3_text", "Gemma 3 (text)", _gemma3, chat_template="gemma.jinja", special_tokens=_TURNS
)

"""Per-architecture GGUF facts: the one table a model family adds to.

Tensor names come from the gguf package's own ``TensorNameMap`` (``gguf.get_tensor_name_map``),
the table llama.cpp's converter uses, so no Hugging Face -> GGUF name is written by hand here.
What a family adds is only what that map cannot know:

- ``arch``: the ``general.architecture`` llama.cpp loads (a ``gguf.MODEL_ARCH_NAMES`` value);
  Mistral is ``llama``, as llama.cpp's converter writes it.
- ``hparams(writer, config)``: the ``<arch>.*`` keys beyond the common ones
  (``common_hparams``: layers, widths, heads, context, RoPE base, norm epsilon, head size).
- ``rows(hf_name, config)``: a reordering of a tensor's output rows, or None. It is applied to
  the weight, to its bias and, in a LoRA GGUF, to lora_b (rows of B @ A are rows of B), so it
  must act on rows only. Llama's is llama.cpp's q/k permutation (rotate-half RoPE in Hugging
  Face order -> ggml's interleaved pairs, ``LlamaModel.permute`` in convert_hf_to_gguf.py).
- ``values(hf_name, array, config)``: any other change to a merged tensor, returning
  ``[(hf_name, array), ...]``: the hook for splitting a fused tensor into the ones llama.cpp
  expects, or Gemma's ``norm + 1`` (llama.cpp's Gemma scales by the stored weight, transformers
  by 1 + weight). A LoRA GGUF refuses a family whose hook may change a linear layer, since such
  a change does not carry over to lora_a/lora_b; ``values_spare_linears`` says a hook never does
  (Gemma's only changes norms, which LoRA never targets).
- ``extra_tensors(config)``: tensors llama.cpp wants that the checkpoint does not hold
  (Llama 3's ``rope_freqs`` for its RoPE scaling).

Adding a family (see docs/export.md): one ``GGUFFamily`` and its Hugging Face architecture
names in ``FAMILIES``, plus a round-trip test with a tiny model transformers writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loraswitch.core.errors import UserError

RowsHook = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class GGUFFamily:
    arch: str
    hparams: Callable[[Any, dict[str, Any]], None]
    rows: Callable[[str, dict[str, Any]], RowsHook | None] = lambda name, config: None
    values: Callable[[str, np.ndarray, dict[str, Any]], list[tuple[str, np.ndarray]]] | None = None
    extra_tensors: Callable[[dict[str, Any]], list[tuple[str, np.ndarray]]] = lambda config: []
    values_spare_linears: bool = False


# ---------------------------------------------------------------- config access


def head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def rope(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(RoPE base, scaling dict with 'rope_type' or None), from transformers 4 keys
    (rope_theta, rope_scaling) or transformers 5's rope_parameters."""
    params = config.get("rope_parameters") or {}
    theta = float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)
    scaling = config.get("rope_scaling") or params
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    return theta, (None if kind == "default" else dict(scaling, rope_type=kind))


def common_hparams(w: Any, config: dict[str, Any], rope_base: float | None = None) -> None:
    """The keys every decoder family here writes (convert_hf_to_gguf.py's TextModel);
    ``rope_base`` where the family reads it itself (Gemma 3 nests it per layer type)."""
    heads = config["num_attention_heads"]
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config.get("max_position_embeddings", 2048))
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(config.get("num_key_value_heads") or heads)
    w.add_rope_freq_base(rope(config)[0] if rope_base is None else rope_base)
    w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    w.add_vocab_size(config["vocab_size"])
    if config.get("head_dim"):
        w.add_key_length(head_dim(config))
        w.add_value_length(head_dim(config))


def refuse_rope_scaling(config: dict[str, Any], allowed: tuple[str, ...] = ()) -> dict[str, Any] | None:
    _, scaling = rope(config)
    if scaling is not None and scaling["rope_type"] not in allowed:
        raise UserError(
            f"config.json: RoPE scaling {scaling['rope_type']!r} is not exported to GGUF yet"
            + (f" (supported: {', '.join(allowed)})" if allowed else "")
        )
    return scaling


# ---------------------------------------------------------------- Llama (and Mistral)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py LlamaModel.permute); inverse of
    core.models.gguf.convert.unpermute_qk."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_rows(name: str, config: dict[str, Any]) -> RowsHook | None:
    heads = config["num_attention_heads"]
    if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        return lambda w: permute_qk(w, heads)
    if name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        kv = config.get("num_key_value_heads") or heads
        return lambda w: permute_qk(w, kv)
    return None


def llama_hparams(w: Any, config: dict[str, Any]) -> None:
    import gguf

    common_hparams(w, config)
    w.add_rope_dimension_count(head_dim(config))
    scaling = refuse_rope_scaling(config, ("linear", "llama3"))
    if scaling is not None and scaling["rope_type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))


def llama3_rope_freqs(config: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """Llama 3.1+'s RoPE scaling as llama.cpp takes it: per-frequency divisors in a
    ``rope_freqs`` tensor (convert_hf_to_gguf.py LlamaModel.generate_extra_tensors)."""
    base, scaling = rope(config)
    if scaling is None or scaling["rope_type"] != "llama3":
        return []
    dim = head_dim(config)
    factor = float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_context = float(scaling.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_context / low, old_context / high
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return [("rope_freqs.weight", np.asarray(factors, np.float32))]


LLAMA = GGUFFamily("llama", llama_hparams, rows=llama_rows, extra_tensors=llama3_rope_freqs)


# ---------------------------------------------------------------- Qwen2 / Qwen3 (NEOX RoPE: no permutation)


def qwen_hparams(w: Any, config: dict[str, Any]) -> None:
    common_hparams(w, config)
    refuse_rope_scaling(config)


QWEN2 = GGUFFamily("qwen2", qwen_hparams)
QWEN3 = GGUFFamily("qwen3", qwen_hparams)

# ---------------------------------------------------------------- Gemma 2 / Gemma 3 (NEOX RoPE, norms stored + 1)


def gemma_values(name: str, array: np.ndarray, config: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """transformers' Gemma norms scale by (1 + weight), llama.cpp's by the stored weight: every
    norm is written + 1, as convert_hf_to_gguf.py's Gemma2Model / Gemma3Model do."""
    return [(name, array + np.float32(1) if name.endswith("norm.weight") else array)]


def _gemma_spec(config: dict[str, Any]) -> Any:
    from loraswitch.core.models.families import spec_from_config

    return spec_from_config(config, Path("config.json"))


def _check_gemma_attention_scale(config: dict[str, Any], spec: Any) -> None:
    """llama.cpp does not read query_pre_attn_scalar: it scales by head_dim ** -0.5 (by
    (hidden / heads) ** -0.5 for Gemma 2's 27B, which it recognises by its 46 layers)."""
    scalar = config.get("query_pre_attn_scalar", 256)
    twenty_seven_b = spec.num_layers == 46 and scalar == spec.hidden_size // spec.num_heads
    if scalar != spec.head_dim and not twenty_seven_b:
        raise UserError(
            f"config.json: query_pre_attn_scalar {scalar} is not head_dim ({spec.head_dim}); llama.cpp's "
            "Gemma cannot express it, so a GGUF would compute another model"
        )


def _head_dim_keys(w: Any, config: dict[str, Any], spec: Any) -> None:
    if not config.get("head_dim"):  # common_hparams wrote them when config.json has the key
        w.add_key_length(spec.head_dim)
        w.add_value_length(spec.head_dim)


def gemma2_hparams(w: Any, config: dict[str, Any]) -> None:
    spec = _gemma_spec(config)
    _check_gemma_attention_scale(config, spec)
    common_hparams(w, config)
    _head_dim_keys(w, config, spec)
    if spec.attn_softcap is not None:
        w.add_attn_logit_softcapping(spec.attn_softcap)
    if spec.final_softcap is not None:
        w.add_final_logit_softcapping(spec.final_softcap)
    w.add_sliding_window(config["sliding_window"])


GEMMA3_PATTERN, GEMMA3_LOCAL_BASE = 6, 10000.0  # llama.cpp's gemma3 hard-codes both


def gemma3_hparams(w: Any, config: dict[str, Any]) -> None:
    import gguf

    spec = _gemma_spec(config)
    _check_gemma_attention_scale(config, spec)
    pattern = tuple(spec.layer_windows[i] is None for i in range(spec.num_layers))
    if pattern != tuple((i + 1) % GEMMA3_PATTERN == 0 for i in range(spec.num_layers)):
        raise UserError(
            "config.json: layer_types is not five sliding layers then a global one, which llama.cpp assumes"
        )
    if spec.local_rope is None or spec.local_rope.theta != GEMMA3_LOCAL_BASE or spec.final_softcap is not None:
        raise UserError(
            "config.json: rope_local_base_freq must be 10000 and final_logit_softcapping null for llama.cpp's gemma3"
        )
    common_hparams(w, config, rope_base=spec.rope.theta)  # the global layers' base
    _head_dim_keys(w, config, spec)
    w.add_sliding_window(config["sliding_window"])
    if spec.rope.kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(spec.rope.factor)
    elif spec.rope.kind != "default":
        raise UserError(f"config.json: RoPE scaling {spec.rope.kind!r} is not exported to GGUF for Gemma 3")


GEMMA2 = GGUFFamily("gemma2", gemma2_hparams, values=gemma_values, values_spare_linears=True)
GEMMA3 = GGUFFamily("gemma3", gemma3_hparams, values=gemma_values, values_spare_linears=True)


# ---------------------------------------------------------------- Phi-3 (fused qkv and gate_up, NEOX RoPE)


def phi3_hparams(w: Any, config: dict[str, Any]) -> None:
    """convert_hf_to_gguf.py's Phi3MiniModel: the fused tensors go as they are (attn_qkv,
    ffn_up holding gate then up); sliding_window 0 when absent (llama.cpp's Phi-4 marker)."""
    common_hparams(w, config)
    refuse_rope_scaling(config)
    w.add_rope_dimension_count(head_dim(config))
    w.add_rope_scaling_orig_ctx_len(
        config.get("original_max_position_embeddings") or config.get("max_position_embeddings", 4096)
    )
    w.add_sliding_window(config.get("sliding_window") or 0)


PHI3 = GGUFFamily("phi3", phi3_hparams)

# Hugging Face architecture (config.json "architectures") -> its GGUF family
FAMILIES: dict[str, GGUFFamily] = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": LLAMA,
    "Qwen2ForCausalLM": QWEN2,
    "Qwen3ForCausalLM": QWEN3,
    "Gemma2ForCausalLM": GEMMA2,
    "Gemma3ForCausalLM": GEMMA3,
    "Phi3ForCausalLM": PHI3,
}


def family_for(config: dict[str, Any]) -> GGUFFamily:
    archs = config.get("architectures") or []
    for arch in archs:
        if arch in FAMILIES:
            return FAMILIES[arch]
    raise UserError(
        f"config.json: architecture {archs!r} has no GGUF export yet; exported: {', '.join(FAMILIES)} (docs/export.md)"
    )

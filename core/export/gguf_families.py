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
  expects, or Gemma's ``norm + 1``. None of the families below needs one; a LoRA GGUF refuses a
  family that has one, since such a change does not carry over to lora_a/lora_b.
- ``extra_tensors(config)``: tensors llama.cpp wants that the checkpoint does not hold
  (Llama 3's ``rope_freqs`` for its RoPE scaling).

Adding a family (see docs/export.md): one ``GGUFFamily`` and its Hugging Face architecture
names in ``FAMILIES``, plus a round-trip test with a tiny model transformers writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
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


def common_hparams(w: Any, config: dict[str, Any]) -> None:
    """The keys every decoder family here writes (convert_hf_to_gguf.py's TextModel)."""
    heads = config["num_attention_heads"]
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config.get("max_position_embeddings", 2048))
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(config.get("num_key_value_heads") or heads)
    w.add_rope_freq_base(rope(config)[0])
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

# Hugging Face architecture (config.json "architectures") -> its GGUF family
FAMILIES: dict[str, GGUFFamily] = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": LLAMA,
    "Qwen2ForCausalLM": QWEN2,
    "Qwen3ForCausalLM": QWEN3,
}


def family_for(config: dict[str, Any]) -> GGUFFamily:
    archs = config.get("architectures") or []
    for arch in archs:
        if arch in FAMILIES:
            return FAMILIES[arch]
    raise UserError(
        f"config.json: architecture {archs!r} has no GGUF export yet; exported: {', '.join(FAMILIES)} (docs/export.md)"
    )

"""Named model shapes for ``random:<shape>``, as Hugging Face LlamaConfig dicts.

``tiny`` is for tests (its untied lm_head exercises the untied path); the llama-* shapes match
the public Llama 3.x configurations so benchmark numbers compare with published ones.
"""

from __future__ import annotations

import copy
from typing import Any

from loraswitch.core.errors import UserError

BOS_ID, EOS_ID, PAD_ID = 256, 258, 256


def llama_config(
    hidden: int,
    ffn: int,
    layers: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    *,
    tied: bool,
    rope_theta: float,
    dtype: str,
    max_pos: int = 2048,
    head_dim: int | None = None,
    rms_norm_eps: float = 1e-5,
    bos: int | None = BOS_ID,
    eos: int | None = EOS_ID,
    pad: int | None = PAD_ID,
) -> dict[str, Any]:
    """A complete Hugging Face LlamaConfig dict (also used for GGUF conversion)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim or hidden // heads,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": max_pos,
        "rms_norm_eps": rms_norm_eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": dtype,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }


SHAPES: dict[str, dict[str, Any]] = {
    "tiny": llama_config(64, 128, 2, 4, 2, 512, tied=False, rope_theta=10000.0, dtype="float32"),
    "llama-1b": llama_config(2048, 8192, 16, 32, 8, 128256, tied=True, rope_theta=500000.0, dtype="bfloat16"),
    "llama-3b": llama_config(3072, 8192, 28, 24, 8, 128256, tied=True, rope_theta=500000.0, dtype="bfloat16"),
    "llama-8b": llama_config(4096, 14336, 32, 32, 8, 128256, tied=False, rope_theta=500000.0, dtype="bfloat16"),
}


def shape_config(name: str) -> dict[str, Any]:
    """A fresh copy of the config dict of shape ``name`` (callers may modify it)."""
    if name not in SHAPES:
        raise UserError(f"model: unknown random shape {name!r}; shapes: {', '.join(SHAPES)}")
    return copy.deepcopy(SHAPES[name])


def tensor_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every weight of a Llama config under its HF name, in a fixed order ([out, in] for linears)."""
    h, f = config["hidden_size"], config["intermediate_size"]
    n_heads, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // n_heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config["vocab_size"], h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "self_attn.q_proj.weight"] = (n_heads * head_dim, h)
        shapes[p + "self_attn.k_proj.weight"] = (n_kv * head_dim, h)
        shapes[p + "self_attn.v_proj.weight"] = (n_kv * head_dim, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, n_heads * head_dim)
        shapes[p + "mlp.gate_proj.weight"] = (f, h)
        shapes[p + "mlp.up_proj.weight"] = (f, h)
        shapes[p + "mlp.down_proj.weight"] = (h, f)
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (config["vocab_size"], h)
    return shapes


def count_params(config: dict[str, Any]) -> int:
    total = 0
    for shape in tensor_shapes(config).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total

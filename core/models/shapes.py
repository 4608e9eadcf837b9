"""Named model shapes for ``random:<shape>``, as Hugging Face config dicts.

``tiny`` (Llama), ``tiny-qwen2``, ``tiny-qwen3``, ``tiny-gemma2``, ``tiny-gemma3`` and
``tiny-phi3`` are for tests: untied or tied heads, biases, q/k norms, an explicit head_dim,
Gemma's soft-caps and sliding layers, Phi-3's fused linears, at hidden size 64. The other shapes match the public
configurations (Llama 3.x; Qwen3-0.6B, Qwen3-1.7B, Qwen2.5-1.5B, Gemma-3-1B and Phi-3-mini-4k, from their
config.json) so
benchmark numbers compare with published ones; only the token ids are the byte tokenizer's.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.models.families import spec_from_config

BOS_ID, EOS_ID, PAD_ID = 256, 258, 256


def _decoder(
    architecture: str,
    model_type: str,
    dims: tuple[int, int, int, int, int, int],
    dtype: str,
    bos: int | list[int] | None = BOS_ID,
    eos: int | list[int] | None = EOS_ID,
    pad: int | None = PAD_ID,
) -> dict[str, Any]:
    """The keys every family's config.json shares: architecture, the sizes ``dims`` = (hidden,
    ffn, layers, heads, kv_heads, vocab), dtype and token ids; each family adds its own."""
    hidden, ffn, layers, heads, kv_heads, vocab = dims
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": dtype,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }


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
        **_decoder("LlamaForCausalLM", "llama", (hidden, ffn, layers, heads, kv_heads, vocab), dtype, bos, eos, pad),
        "head_dim": head_dim or hidden // heads,
        "tie_word_embeddings": tied,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": max_pos,
        "rms_norm_eps": rms_norm_eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
    }


def qwen_config(
    architecture: str,
    hidden: int,
    ffn: int,
    layers: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    *,
    tied: bool,
    dtype: str,
    max_pos: int,
    head_dim: int | None = None,
    max_window_layers: int | None = None,
    sliding_window: int | None = None,
    rope_theta: float = 1000000.0,
) -> dict[str, Any]:
    """A Qwen2Config (Qwen2, Qwen2.5) or Qwen3Config dict as the released config.json files
    write them (sliding windows off), with the byte tokenizer's token ids."""
    qwen3 = architecture == "Qwen3ForCausalLM"
    config = {
        **_decoder(architecture, "qwen3" if qwen3 else "qwen2", (hidden, ffn, layers, heads, kv_heads, vocab), dtype),
        "tie_word_embeddings": tied,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": max_pos,
        "max_window_layers": layers if max_window_layers is None else max_window_layers,
        "use_sliding_window": False,
        "sliding_window": sliding_window,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
    }
    if qwen3:
        config.update(head_dim=head_dim or 128, attention_bias=False)
    elif head_dim is not None:
        config["head_dim"] = head_dim
    return config


def gemma_config(
    architecture: str,
    hidden: int,
    ffn: int,
    layers: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    *,
    head_dim: int,
    sliding_window: int,
    dtype: str,
    max_pos: int,
) -> dict[str, Any]:
    """A Gemma2Config or Gemma3TextConfig dict as the released config.json files write them
    (Gemma 2: soft-capping 50 / 30, every other layer sliding; Gemma 3: five sliding layers then
    a global one, local rope base 10k, global 1M), with the byte tokenizer's token ids."""
    gemma3 = architecture == "Gemma3ForCausalLM"
    config: dict[str, Any] = {
        **_decoder(
            architecture, "gemma3_text" if gemma3 else "gemma2", (hidden, ffn, layers, heads, kv_heads, vocab), dtype
        ),
        "head_dim": head_dim,
        "tie_word_embeddings": True,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": head_dim,
        "sliding_window": sliding_window,
        "max_position_embeddings": max_pos,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "attention_dropout": 0.0,
    }
    if gemma3:
        config.update(
            rope_theta=1_000_000.0,
            rope_local_base_freq=10_000.0,
            rope_scaling=None,
            sliding_window_pattern=6,
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
        )
    else:
        config.update(rope_theta=10_000.0, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    return config


def phi3_config(
    hidden: int, ffn: int, layers: int, heads: int, kv_heads: int, vocab: int, *, dtype: str, sliding_window: int | None
) -> dict[str, Any]:
    """A Phi3Config dict as Phi-3-mini-4k-instruct's config.json writes it (fused qkv_proj and
    gate_up_proj, no rope scaling, one window for every layer), with the byte tokenizer's ids."""
    return {
        **_decoder("Phi3ForCausalLM", "phi3", (hidden, ffn, layers, heads, kv_heads, vocab), dtype),
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096,
        "sliding_window": sliding_window,
        "rms_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
    }


QWEN2, QWEN3 = "Qwen2ForCausalLM", "Qwen3ForCausalLM"
GEMMA2, GEMMA3 = "Gemma2ForCausalLM", "Gemma3ForCausalLM"
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": llama_config(64, 128, 2, 4, 2, 512, tied=False, rope_theta=10000.0, dtype="float32"),
    "tiny-qwen2": qwen_config(QWEN2, 64, 128, 2, 4, 2, 512, tied=False, dtype="float32", max_pos=2048),
    "tiny-qwen3": qwen_config(QWEN3, 64, 128, 2, 4, 2, 512, tied=True, dtype="float32", max_pos=2048, head_dim=32),
    # Tiny Gemma / Phi-3: a window (8) shorter than test sequences; Gemma 3's pattern 2 puts a
    # sliding and a global layer in two.
    "tiny-gemma2": gemma_config(
        GEMMA2, 64, 128, 2, 4, 2, 512, head_dim=16, sliding_window=8, dtype="float32", max_pos=2048
    ),
    "tiny-gemma3": {
        **gemma_config(GEMMA3, 64, 128, 2, 4, 2, 512, head_dim=16, sliding_window=8, dtype="float32", max_pos=2048),
        "sliding_window_pattern": 2,
    },
    "tiny-phi3": phi3_config(64, 128, 2, 4, 2, 512, dtype="float32", sliding_window=8),
    "llama-1b": llama_config(2048, 8192, 16, 32, 8, 128256, tied=True, rope_theta=500000.0, dtype="bfloat16"),
    "llama-3b": llama_config(3072, 8192, 28, 24, 8, 128256, tied=True, rope_theta=500000.0, dtype="bfloat16"),
    "llama-8b": llama_config(4096, 14336, 32, 32, 8, 128256, tied=False, rope_theta=500000.0, dtype="bfloat16"),
    "qwen3-0.6b": qwen_config(QWEN3, 1024, 3072, 28, 16, 8, 151936, tied=True, dtype="bfloat16", max_pos=40960),
    "qwen3-1.7b": qwen_config(QWEN3, 2048, 6144, 28, 16, 8, 151936, tied=True, dtype="bfloat16", max_pos=40960),
    "qwen2.5-1.5b": qwen_config(
        QWEN2,
        1536,
        8960,
        28,
        12,
        2,
        151936,
        tied=True,
        dtype="bfloat16",
        max_pos=32768,
        max_window_layers=21,
        sliding_window=32768,
    ),
    # google/gemma-3-1b-it's config.json: 1.00B parameters
    "gemma3-1b": gemma_config(
        GEMMA3, 1152, 6912, 26, 4, 1, 262144, head_dim=256, sliding_window=512, dtype="bfloat16", max_pos=32768
    ),
    # microsoft/Phi-3-mini-4k-instruct's config.json: 3.82B parameters
    "phi3-mini": phi3_config(3072, 8192, 32, 32, 32, 32064, dtype="bfloat16", sliding_window=2047),
}


def shape_config(name: str) -> dict[str, Any]:
    """A fresh copy of the config dict of shape ``name`` (callers may modify it)."""
    if name not in SHAPES:
        raise UserError(f"model: unknown random shape {name!r}; shapes: {', '.join(SHAPES)}")
    return copy.deepcopy(SHAPES[name])


def tensor_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every weight of a config of a supported family under its HF name, in a fixed order
    ([out, in] for linears); the family registry's ModelSpec decides which exist."""
    return spec_from_config(config, Path("config.json")).tensor_shapes()


def count_params(config: dict[str, Any]) -> int:
    total = 0
    for shape in tensor_shapes(config).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total

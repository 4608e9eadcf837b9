"""The Llama family (LlamaForCausalLM, MistralForCausalLM): the config.json rules both backends
hold to, and the tensors a checkpoint of it holds.

A rule here is the intersection of what every backend implements: transformers would also build
a Llama with biases, another activation or a YaRN RoPE, but the jax backend's hand-written
model would not, and a model that trains on one backend and is refused on the other is a
surprise nobody wants. So both refuse it, with the same line, before either loads anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.models.config_fields import (
    boolean,
    object_or_null,
    optional_positive_int,
    positive_int,
    positive_number,
)
from loraswitch.core.models.shapes import tensor_shapes

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral"}  # architecture -> model_type
ROPE_TYPES = ("default", "linear", "llama3")
MAX_LAYERS = 1024  # Llama 3.1 405B has 126; a larger number is a typo, and would make a huge tensor list
# Tensors a checkpoint may carry that the model rebuilds itself (old transformers saved the RoPE table).
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def check_config(config: dict[str, Any], file: Path) -> None:
    """Every key either backend reads: present where required, of the right type, finite, and
    consistent with the others. Raises a UserError naming ``file`` and the key."""
    positive_int(config, "vocab_size", file)
    positive_int(config, "intermediate_size", file)
    positive_int(config, "num_hidden_layers", file, most=MAX_LAYERS)
    hidden = positive_int(config, "hidden_size", file)
    heads = positive_int(config, "num_attention_heads", file)
    kv_heads = heads if config.get("num_key_value_heads") is None else positive_int(config, "num_key_value_heads", file)
    if heads % kv_heads:
        raise UserError(f"{file}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
    head_dim = optional_positive_int(config, "head_dim", file) or hidden // heads
    if head_dim < 2 or head_dim % 2:
        raise UserError(
            f"{file}: head_dim {head_dim} (head_dim, or hidden_size / num_attention_heads) must be even: "
            "rotary embeddings rotate pairs of dimensions"
        )
    positive_number(config, "rms_norm_eps", file, 1e-6)
    optional_positive_int(config, "max_position_embeddings", file)
    optional_positive_int(config, "sliding_window", file)
    boolean(config, "use_sliding_window", file, True)
    boolean(config, "tie_word_embeddings", file, False)
    for key in ("attention_bias", "mlp_bias"):
        if boolean(config, key, file, False):
            raise UserError(f"{file}: {key} = true is not supported (Llama-family layers have no biases)")
    check_special_ids(config, file)
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"{file}: hidden_act {act!r} is not supported (the Llama family uses silu)")
    check_rope(config, file)


def check_special_ids(config: dict[str, Any], file: Path) -> None:
    """bos/eos/pad ids name rows of the embedding: transformers builds nn.Embedding with
    padding_idx = pad_token_id, which asserts inside torch when it is out of range."""
    vocab_size = config["vocab_size"]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = config.get(key)
        for token_id in value if isinstance(value, list) else [value]:
            if token_id is None and not isinstance(value, list):
                continue
            if not isinstance(token_id, int) or isinstance(token_id, bool) or not 0 <= token_id < vocab_size:
                raise UserError(
                    f"{file}: key {key!r} = {value!r}: token ids must be integers in [0, vocab_size {vocab_size})"
                )


def rope_parameters(config: dict[str, Any], file: Path) -> dict[str, Any]:
    """RoPE settings, from ``rope_parameters`` (transformers 5) over ``rope_scaling`` + ``rope_theta`` (4.x)."""
    return {**object_or_null(config, "rope_scaling", file), **object_or_null(config, "rope_parameters", file)}


def check_rope(config: dict[str, Any], file: Path) -> None:
    params = rope_parameters(config, file)
    if "rope_theta" not in params:
        params["rope_theta"] = config.get("rope_theta", 10000.0)
    positive_number(params, "rope_theta", file)
    kind = params.get("rope_type", params.get("type")) or "default"
    if kind not in ROPE_TYPES:
        raise UserError(f"{file}: rope type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if kind in ("linear", "llama3"):
        positive_number(params, "factor", file)
    if kind == "llama3":
        low = positive_number(params, "low_freq_factor", file)
        high = positive_number(params, "high_freq_factor", file)
        if high <= low:
            raise UserError(f"{file}: rope high_freq_factor ({high}) must exceed low_freq_factor ({low})")
        positive_int(params, "original_max_position_embeddings", file, config.get("max_position_embeddings", 8192))


def expected_tensors(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint must hold, with its shape ([out, in] for linears, as HF stores them)."""
    return tensor_shapes(config)


def may_carry(name: str, config: dict[str, Any]) -> bool:
    """Tensors a checkpoint may hold beyond ``expected_tensors``: ignored, never an error."""
    tied = config.get("tie_word_embeddings") is True
    return name.endswith(IGNORED_SUFFIXES) or (tied and name == "lm_head.weight")

"""The Llama-family architecture read from a Hugging Face config.json, as a static description.

Frozen and hashable, because it is a static attribute of the NNX modules: everything in it is
fixed at trace time, so jit compiles each shape once. What the hand-written model does not
implement is refused by the core's model-directory rules (core/models/llama_family.py), which
the torch backend applies too, naming the key, rather than silently computing something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraswitch.core.models.architectures import check_config
from loraswitch.core.models.llama_family import rope_parameters

# The linear layers of one decoder block, under their HF module names, and the submodule that holds them.
LINEAR_PARENT = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


@dataclass(frozen=True)
class RopeSpec:
    theta: float
    kind: str = "default"  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class LlamaSpec:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    rope: RopeSpec
    sliding_window: int | None = None

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of every linear in a block."""
        d, f = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {
            "q_proj": (d, q),
            "k_proj": (d, kv),
            "v_proj": (d, kv),
            "o_proj": (q, d),
            "gate_proj": (d, f),
            "up_proj": (d, f),
            "down_proj": (f, d),
        }

    def n_params(self) -> int:
        per_layer = sum(i * o for i, o in self.linear_dims().values()) + 2 * self.hidden_size
        heads = 1 if self.tie_word_embeddings else 2
        return self.num_layers * per_layer + heads * self.vocab_size * self.hidden_size + self.hidden_size


def _rope(config: dict[str, Any], file: Path) -> RopeSpec:
    params = rope_parameters(config, file)
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type")) or "default"
    if kind == "linear":
        return RopeSpec(theta=theta, kind="linear", factor=float(params["factor"]))
    if kind == "llama3":
        return RopeSpec(
            theta=theta,
            kind="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(
                params.get("original_max_position_embeddings") or config.get("max_position_embeddings", 8192)
            ),
        )
    return RopeSpec(theta=theta)


def spec_from_config(config: dict[str, Any], file: Path) -> LlamaSpec:
    """The static description of a config.json. The rules (supported architecture, no biases,
    silu, RoPE types, head counts, finite numbers) are the core's, shared with every backend
    (core/models/architectures.py); ``file`` names config.json in their messages."""
    check_config(config, file)
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
    return LlamaSpec(
        vocab_size=config["vocab_size"],
        hidden_size=hidden,
        intermediate_size=config["intermediate_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or hidden // heads,
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=config.get("tie_word_embeddings") is True,
        rope=_rope(config, file),
        sliding_window=window or None,
    )

"""The Llama-family architecture read from a Hugging Face config.json, as a static description.

Frozen and hashable, because it is a static attribute of the NNX modules: everything in it is
fixed at trace time, so jit compiles each shape once. Anything the hand-written model does not
implement is refused here, naming the key, rather than silently computing something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraswitch.core.adapters.modules import PROJECTIONS
from loraswitch.core.errors import UserError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
# The linear layers of one decoder block, under their HF module names, and the submodule that
# holds them, in block order (the order is each linear's number in its dropout key).
LINEAR_PARENT = PROJECTIONS


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


def _int(config: dict[str, Any], key: str, file: Path, default: int | None = None) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"{file}: key {key!r} must be a positive integer, got {value!r}")
    return value


def _rope(config: dict[str, Any], file: Path) -> RopeSpec:
    # transformers 5 writes `rope_parameters` (theta inside); 4.x wrote `rope_theta` + `rope_scaling`.
    params = dict(config.get("rope_parameters") or {})
    scaling = config.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise UserError(f"{file}: rope_parameters / rope_scaling must be JSON objects")
    params = {**scaling, **params}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind == "default":
        return RopeSpec(theta=float(theta))
    if kind == "linear":
        return RopeSpec(theta=float(theta), kind="linear", factor=float(params["factor"]))
    if kind == "llama3":
        try:
            return RopeSpec(
                theta=float(theta),
                kind="llama3",
                factor=float(params["factor"]),
                low_freq_factor=float(params["low_freq_factor"]),
                high_freq_factor=float(params["high_freq_factor"]),
                original_max_position_embeddings=int(
                    params.get("original_max_position_embeddings") or config.get("max_position_embeddings", 8192)
                ),
            )
        except KeyError as e:
            raise UserError(f"{file}: rope scaling of type llama3 needs key {e.args[0]!r}") from e
    raise UserError(
        f"{file}: rope type {kind!r} is not supported by the jax backend (supported: default, linear, llama3)"
    )


def spec_from_config(config: dict[str, Any], file: Path) -> LlamaSpec:
    """Parse and check a HF config dict; ``file`` names config.json in error messages."""
    archs = config.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise UserError(
            f"{file}: unsupported architecture {archs!r}; the jax backend supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise UserError(f"{file}: {key} = true is not supported by the jax backend (Llama layers have no biases)")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"{file}: hidden_act {act!r} is not supported by the jax backend (only silu)")
    hidden = _int(config, "hidden_size", file)
    heads = _int(config, "num_attention_heads", file)
    kv_heads = _int(config, "num_key_value_heads", file, heads)
    if heads % kv_heads:
        raise UserError(f"{file}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
    head_dim = config.get("head_dim") or hidden // heads
    window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
    return LlamaSpec(
        vocab_size=_int(config, "vocab_size", file),
        hidden_size=hidden,
        intermediate_size=_int(config, "intermediate_size", file),
        num_layers=_int(config, "num_hidden_layers", file),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=int(head_dim),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        rope=_rope(config, file),
        sliding_window=int(window) if window else None,
    )

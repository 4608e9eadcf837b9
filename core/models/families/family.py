"""What a model family is: an architecture name, its block's linear layers, and the function that
reads its differences from config.json. The shared reading (``Family.spec``) lives here.

A family module (llama.py, qwen.py) is a few ``Family`` values and one ``differences`` function
per family: what its config.json says beyond what every family shares (biases, q/k norms, the
default head_dim, which layers slide), returned as ModelSpec fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.models.families.spec import ModelSpec, check_implemented, parse_rope, positive_int

# The linear layers of a Llama-style block (attention, then the gated MLP), under their HF names.
LLAMA_LINEARS = (
    ("q_proj", "self_attn"),
    ("k_proj", "self_attn"),
    ("v_proj", "self_attn"),
    ("o_proj", "self_attn"),
    ("gate_proj", "mlp"),
    ("up_proj", "mlp"),
    ("down_proj", "mlp"),
)

# differences(config, file, num_layers, strict) -> ModelSpec fields that differ from the defaults
Differences = Callable[[dict[str, Any], Path, int, bool], dict[str, Any]]


@dataclass(frozen=True)
class Family:
    architecture: str  # config.json "architectures", as transformers names the class
    model_type: str  # config.json "model_type"
    label: str  # how the docs and error messages name it
    differences: Differences
    linears: tuple[tuple[str, str], ...] = LLAMA_LINEARS
    chat_template: str | None = None  # a file in templates/: what random shapes and tests of this family use

    @property
    def linear_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.linears)

    def spec(self, config: dict[str, Any], file: Path, *, strict: bool = True) -> ModelSpec:
        """The ModelSpec of ``config``. ``strict`` also refuses what the hand-written jax model
        does not compute (a rope type, an activation, ...), naming the key; without it the spec
        describes any configuration transformers' own class runs (the torch backend's case)."""
        hidden = positive_int(config, "hidden_size", file)
        heads = positive_int(config, "num_attention_heads", file)
        kv_heads = positive_int(config, "num_key_value_heads", file, heads)
        if heads % kv_heads:
            raise UserError(
                f"{file}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"
            )
        layers = positive_int(config, "num_hidden_layers", file)
        fields: dict[str, Any] = {
            "architecture": self.architecture,
            "vocab_size": positive_int(config, "vocab_size", file),
            "hidden_size": hidden,
            "intermediate_size": positive_int(config, "intermediate_size", file),
            "num_layers": layers,
            "num_heads": heads,
            "num_kv_heads": kv_heads,
            "head_dim": int(config.get("head_dim") or hidden // heads),
            "rms_norm_eps": float(config.get("rms_norm_eps", 1e-6)),
            "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
            "rope": parse_rope(config, file),
            "linears": self.linears,
            "layer_windows": (None,) * layers,
            "hidden_act": str(config.get("hidden_act", "silu")),
        }
        fields.update(self.differences(config, file, layers, strict))
        spec = ModelSpec(**fields)
        if strict:
            check_implemented(spec, file)
        return spec

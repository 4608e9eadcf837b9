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
from loraswitch.core.models.config_fields import boolean, optional_positive_int, positive_int, positive_number
from loraswitch.core.models.families.spec import ModelSpec, check_implemented, parse_rope

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

# differences(config, file, num_layers) -> ModelSpec fields that differ from the defaults
Differences = Callable[[dict[str, Any], Path, int], dict[str, Any]]
MAX_LAYERS = 1024  # Llama 3.1 405B has 126; a larger number is a typo, and would make a huge tensor list


@dataclass(frozen=True)
class Family:
    architecture: str  # config.json "architectures", as transformers names the class
    model_type: str  # config.json "model_type"
    label: str  # how the docs and error messages name it
    differences: Differences
    linears: tuple[tuple[str, str], ...] = LLAMA_LINEARS
    chat_template: str | None = None  # a file in templates/: what random shapes and tests of this family use
    special_tokens: tuple[str, ...] = ()  # that template's markers, added to the byte tokenizer of random shapes

    @property
    def linear_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.linears)

    def spec(self, config: dict[str, Any], file: Path) -> ModelSpec:
        """The ModelSpec of ``config``: every key either backend reads present where required, of
        the right type, finite and consistent, and only what both backends compute (a rope type or
        an activation the hand-written jax model lacks is refused for torch too), naming the key."""
        hidden = positive_int(config, "hidden_size", file)
        heads = positive_int(config, "num_attention_heads", file)
        kv_heads = (
            heads if config.get("num_key_value_heads") is None else positive_int(config, "num_key_value_heads", file)
        )
        if heads % kv_heads:
            raise UserError(
                f"{file}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"
            )
        layers = positive_int(config, "num_hidden_layers", file, most=MAX_LAYERS)
        check_common(config, file)
        fields: dict[str, Any] = {
            "architecture": self.architecture,
            "vocab_size": positive_int(config, "vocab_size", file),
            "hidden_size": hidden,
            "intermediate_size": positive_int(config, "intermediate_size", file),
            "num_layers": layers,
            "num_heads": heads,
            "num_kv_heads": kv_heads,
            "head_dim": optional_positive_int(config, "head_dim", file) or hidden // heads,
            "rms_norm_eps": positive_number(config, "rms_norm_eps", file, 1e-6),
            "tie_word_embeddings": boolean(config, "tie_word_embeddings", file, False),
            "rope": parse_rope(config, file),
            "linears": self.linears,
            "layer_windows": (None,) * layers,
            "hidden_act": str(config.get("hidden_act", "silu")),
        }
        fields.update(self.differences(config, file, layers))
        spec = ModelSpec(**fields)
        if spec.head_dim < 2 or spec.head_dim % 2:
            raise UserError(
                f"{file}: head_dim {spec.head_dim} (head_dim, or hidden_size / num_attention_heads) must be even: "
                "rotary embeddings rotate pairs of dimensions"
            )
        check_implemented(spec, file)
        return spec


def check_common(config: dict[str, Any], file: Path) -> None:
    """Keys every family shares that size nothing but must still be right: a bool where a bool
    belongs, a max length that is a length, special token ids inside the vocabulary
    (transformers builds nn.Embedding with padding_idx = pad_token_id, which asserts inside torch
    when it is out of range)."""
    optional_positive_int(config, "max_position_embeddings", file)
    optional_positive_int(config, "sliding_window", file)
    boolean(config, "use_sliding_window", file, True)
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

"""The one description of a decoder-only model that every layer reads: ``ModelSpec``.

A family (llama.py, qwen.py) turns its config.json into a ModelSpec; the core reads it for the
model-directory checks, the random shapes and the tensor names, the jax backend builds its
hand-written model from it. It is frozen and hashable, because the jax model keeps it as a static
attribute: everything in it is fixed at trace time, so jit compiles each shape once.

The shared parsing (dimensions, rope, sliding windows) lives here; what differs between families
(biases, q/k norms, which windows apply) is passed in by the family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.models.config_fields import object_or_null, positive_int, positive_number

# The rope types the hand-written model computes (backends/jax_flax/rope.py); transformers knows more.
IMPLEMENTED_ROPE = ("default", "linear", "llama3")
# The MLP activations it computes: silu (Llama, Qwen, Phi-3) and GELU's tanh approximation (Gemma).
IMPLEMENTED_ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
FULL_ATTENTION, SLIDING_ATTENTION = "full_attention", "sliding_attention"


@dataclass(frozen=True)
class RopeSpec:
    theta: float
    kind: str = "default"  # a transformers rope type; the hand-written model implements IMPLEMENTED_ROPE
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides the numbers of a forward pass.

    ``linears`` lists the block's linear layers as (name, parent submodule) in block order, under
    their Hugging Face names (``("q_proj", "self_attn")``); ``biased`` the ones with a bias.
    ``layer_windows`` holds one entry per layer: the sliding-window length, or None for full
    causal attention."""

    architecture: str
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
    linears: tuple[tuple[str, str], ...]
    layer_windows: tuple[int | None, ...]
    biased: tuple[str, ...] = ()
    qk_norm: bool = False  # RMSNorm over head_dim on every q and k head, before rope (Qwen3, Gemma 3)
    hidden_act: str = "silu"
    # Gemma: every RMSNorm scales by (norm_offset + weight) in fp32 (weights stored around 0),
    # embeddings are multiplied by sqrt(hidden_size), and norms also follow attention and the MLP
    # (post_attention_layernorm on the attention output, pre/post_feedforward_layernorm around the MLP).
    norm_offset: float = 0.0
    embed_scale: bool = False
    sandwich_norms: bool = False
    attention_scale: float | None = None  # softmax scale; None: head_dim ** -0.5 (Gemma: query_pre_attn_scalar ** -0.5)
    attn_softcap: float | None = None  # Gemma 2: cap * tanh(score / cap) on attention scores, before the mask
    final_softcap: float | None = None  # Gemma 2: the same on the output logits (and inside the loss)
    local_rope: RopeSpec | None = None  # Gemma 3: the rope of the sliding layers (rope_local_base_freq)

    @property
    def fused(self) -> bool:
        """Phi-3: q, k, v are one linear (qkv_proj) and gate, up another (gate_up_proj)."""
        return "qkv_proj" in self.linear_names

    @property
    def linear_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.linears)

    def parent(self, name: str) -> str:
        return dict(self.linears)[name]

    @property
    def sliding_window(self) -> int | None:
        """The window every layer shares, or None (full attention everywhere, or mixed layers)."""
        first = self.layer_windows[0]
        return first if all(w == first for w in self.layer_windows) else None

    @property
    def mixed_windows(self) -> bool:
        """Some layers slide and others do not, or they slide over different lengths."""
        return len(set(self.layer_windows)) > 1

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of every linear of a block, in block order."""
        d, f = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        dims = {
            "q_proj": (d, q),
            "k_proj": (d, kv),
            "v_proj": (d, kv),
            "o_proj": (q, d),
            "gate_proj": (d, f),
            "up_proj": (d, f),
            "down_proj": (f, d),
            "qkv_proj": (d, q + 2 * kv),  # Phi-3: [q | k | v] along the output
            "gate_up_proj": (d, 2 * f),  # Phi-3: [gate | up] along the output
        }
        return {name: dims[name] for name in self.linear_names}

    def layer_tensors(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of one decoder layer: its name under ``model.layers.N.`` and its Hugging
        Face shape ([out, in] for linear weights)."""
        out: dict[str, tuple[int, ...]] = {}
        for name, (n_in, n_out) in self.linear_dims().items():
            out[f"{self.parent(name)}.{name}.weight"] = (n_out, n_in)
            if name in self.biased:
                out[f"{self.parent(name)}.{name}.bias"] = (n_out,)
        out["input_layernorm.weight"] = (self.hidden_size,)
        out["post_attention_layernorm.weight"] = (self.hidden_size,)
        if self.sandwich_norms:
            out["pre_feedforward_layernorm.weight"] = (self.hidden_size,)
            out["post_feedforward_layernorm.weight"] = (self.hidden_size,)
        if self.qk_norm:
            out["self_attn.q_norm.weight"] = (self.head_dim,)
            out["self_attn.k_norm.weight"] = (self.head_dim,)
        return out

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight of the model under its Hugging Face name, in a fixed order."""
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, self.hidden_size)}
        per_layer = self.layer_tensors()
        for i in range(self.num_layers):
            shapes.update({f"model.layers.{i}.{name}": shape for name, shape in per_layer.items()})
        shapes["model.norm.weight"] = (self.hidden_size,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, self.hidden_size)
        return shapes

    def n_params(self) -> int:
        total = 0
        for shape in self.tensor_shapes().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


# ---------------------------------------------------------------- shared parsing


def rope_parameters(config: dict[str, Any], file: Path) -> dict[str, Any]:
    """RoPE settings, from ``rope_parameters`` (transformers 5) over ``rope_scaling`` + ``rope_theta`` (4.x)."""
    params = {**object_or_null(config, "rope_scaling", file), **object_or_null(config, "rope_parameters", file)}
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return params


def parse_rope(config: dict[str, Any], file: Path, params: dict[str, Any] | None = None) -> RopeSpec:
    """The rope of a config in either spelling, every number checked finite and positive. A type
    the hand-written model does not compute is recorded as it is; ``check_implemented`` refuses it.
    ``params``: one layer type's rope parameters (Gemma 3 has one set per layer type)."""
    params = rope_parameters(config, file) if params is None else params
    theta = positive_number(params, "rope_theta", file)
    kind = str(params.get("rope_type", params.get("type")) or "default")
    if kind == "linear":
        return RopeSpec(theta=theta, kind=kind, factor=positive_number(params, "factor", file))
    if kind == "llama3":
        low = positive_number(params, "low_freq_factor", file)
        high = positive_number(params, "high_freq_factor", file)
        if high <= low:
            raise UserError(f"{file}: rope high_freq_factor ({high}) must exceed low_freq_factor ({low})")
        return RopeSpec(
            theta=theta,
            kind=kind,
            factor=positive_number(params, "factor", file),
            low_freq_factor=low,
            high_freq_factor=high,
            original_max_position_embeddings=positive_int(
                params, "original_max_position_embeddings", file, config.get("max_position_embeddings", 8192)
            ),
        )
    return RopeSpec(theta=theta, kind=kind)


def layer_windows_from_types(
    config: dict[str, Any], file: Path, num_layers: int, window: int | None, default_types: list[str]
) -> tuple[int | None, ...]:
    """Per-layer windows from ``layer_types`` (transformers 5 writes it; ``default_types`` is what
    the family's config class computes when it is absent), checked so that transformers and the
    hand-written model cannot read the same file differently."""
    types = config.get("layer_types")
    if types is None:
        types = default_types
    if not isinstance(types, list) or len(types) != num_layers:
        raise UserError(f"{file}: layer_types must list one attention type per layer ({num_layers})")
    windows: list[int | None] = []
    for i, kind in enumerate(types):
        if kind == FULL_ATTENTION:
            windows.append(None)
        elif kind == SLIDING_ATTENTION:
            if window is None:
                raise UserError(
                    f"{file}: layer_types[{i}] is {SLIDING_ATTENTION} but sliding_window is null "
                    "(or use_sliding_window is false)"
                )
            windows.append(window)
        else:
            raise UserError(
                f"{file}: layer_types[{i}] = {kind!r} is not supported (supported: {FULL_ATTENTION}, {SLIDING_ATTENTION})"
            )
    return tuple(windows)


def optional_window(config: dict[str, Any], file: Path) -> int | None:
    value = config.get("sliding_window")
    if value is None:
        return None
    return positive_int(config, "sliding_window", file)


def check_implemented(spec: ModelSpec, file: Path) -> None:
    """Refuse what loraswitch does not compute on every backend, naming the key. transformers
    would build some of these for the torch backend, but the hand-written jax model would not,
    and a model that trains on one backend and is refused on the other is a surprise nobody wants."""
    for rope in (spec.rope, spec.local_rope):
        if rope is not None and rope.kind not in IMPLEMENTED_ROPE:
            raise UserError(
                f"{file}: rope type {rope.kind!r} is not supported (supported: {', '.join(IMPLEMENTED_ROPE)})"
            )
    if spec.hidden_act not in IMPLEMENTED_ACTIVATIONS:
        raise UserError(
            f"{file}: hidden_act {spec.hidden_act!r} is not supported (supported: {', '.join(IMPLEMENTED_ACTIVATIONS)})"
        )

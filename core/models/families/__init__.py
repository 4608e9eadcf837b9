"""The model-family registry: which architectures loraswitch trains and how each is described.

Everything that depends on the architecture asks here: the core's model-directory check
(``check_config``), the random shapes and their tensor names, the torch backend (which
transformers class, which LoRA targets) and the jax backend (the ``ModelSpec`` its hand-written
model is built from, the PEFT module paths). Framework-free: nothing here imports torch or jax.

A family is a ``Family`` value (family.py) in a module of its own (llama.py, qwen.py, gemma.py,
phi3.py); adding one
means writing its ``differences`` function and listing it in ``FAMILIES``.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.models.config_fields import positive_int
from loraswitch.core.models.families.family import Family
from loraswitch.core.models.families.gemma import GEMMA2, GEMMA3
from loraswitch.core.models.families.llama import LLAMA, MISTRAL
from loraswitch.core.models.families.phi3 import PHI3
from loraswitch.core.models.families.qwen import QWEN2, QWEN3
from loraswitch.core.models.families.spec import ModelSpec, RopeSpec

__all__ = [
    "ALL_LINEAR",
    "FAMILIES",
    "SUPPORTED_ARCHITECTURES",
    "Family",
    "ModelSpec",
    "RopeSpec",
    "chat_template",
    "check_config",
    "family_of",
    "linear_parent",
    "may_carry",
    "resolve_target_modules",
    "spec_from_config",
]

FAMILIES: tuple[Family, ...] = (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA2, GEMMA3, PHI3)
SUPPORTED_ARCHITECTURES = tuple(f.architecture for f in FAMILIES)
ALL_LINEAR = "all-linear"  # peft's name for "every linear layer"; here: every linear of the block
# A linear's parent submodule is the same in every family (q_proj is always in self_attn), so a
# PEFT key or a state path follows from the name alone.
_PARENTS = {name: parent for family in FAMILIES for name, parent in family.linears}
assert all(_PARENTS[name] == parent for family in FAMILIES for name, parent in family.linears)

# Architectures people will try, refused with the reason rather than only "unsupported".
_REFUSED = {
    "MixtralForCausalLM": "mixture of experts",
    "Qwen2MoeForCausalLM": "mixture of experts",
    "Qwen3MoeForCausalLM": "mixture of experts",
    "Qwen2VLForConditionalGeneration": "vision-language",
    "Qwen2_5_VLForConditionalGeneration": "vision-language",
    # Gemma 3 4B and up: a vision tower around the text model; only the text-only 1B layout
    # (Gemma3ForCausalLM) is supported.
    "Gemma3ForConditionalGeneration": "vision-language; Gemma3ForCausalLM (the 1B layout) is supported",
}
# Keys that make a config a mixture-of-experts model, which a dense class would silently ignore.
_MOE_KEYS = ("num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size", "n_routed_experts")
_REQUIRED_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def family_of(config: dict[str, Any], file: Path) -> Family:
    """The family of the one architecture config.json names, its ``model_type`` agreeing;
    otherwise one line naming every supported architecture (and why, for the ones people most
    often try)."""
    archs = config.get("architectures")
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    refused = [f"{a} ({_REFUSED[a]})" for a in archs or [] if isinstance(a, str) and a in _REFUSED]
    if refused:
        raise UserError(f"{file}: architecture {refused[0]} is not supported; supported: {supported}")
    family = next((f for f in FAMILIES if isinstance(archs, list) and archs == [f.architecture]), None)
    if family is None:
        raise UserError(f"{file}: unsupported architecture {archs!r}; 'architectures' must name one of: {supported}")
    model_type = config.get("model_type", family.model_type)
    if model_type != family.model_type:
        raise UserError(
            f"{file}: model_type {model_type!r} contradicts architectures {archs!r} "
            f"(a {family.architecture} has model_type {family.model_type!r}); the config is mixed up"
        )
    return family


def check_config(config: dict[str, Any], file: Path) -> Family:
    """What every backend needs of config.json: a supported family, the keys that size the model,
    nothing that would make a dense class silently compute a different model, and only what both
    backends compute (one rule for every backend: a model that trains on torch and is refused on
    jax would break "switch backend with one flag")."""
    family = family_of(config, file)
    for key in _REQUIRED_KEYS:
        positive_int(config, key, file)
    for key in _MOE_KEYS:
        if config.get(key):
            raise UserError(
                f"{file}: key {key!r} = {config[key]!r} describes a mixture-of-experts model; "
                f"{family.architecture} is dense (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
    family.spec(config, file)
    return family


def spec_from_config(config: dict[str, Any], file: Path) -> ModelSpec:
    """The ModelSpec of a checked config."""
    return check_config(config, file).spec(config, file)


def may_carry(name: str, spec: ModelSpec) -> bool:
    """Tensors a checkpoint may hold beyond ``spec.tensor_shapes()``: ignored, never an error
    (the RoPE table older transformers saved; lm_head beside a tied embedding)."""
    return name.endswith(".rotary_emb.inv_freq") or (spec.tie_word_embeddings and name == "lm_head.weight")


def resolve_target_modules(family: Family, modules: Sequence[str], *, also: Sequence[str] = ()) -> list[str]:
    """Config ``lora_target_modules`` as sorted linear names of ``family``'s block: ``all-linear``
    is all of them; explicit names must be among them (or in ``also``: the torch backend also
    allows ``lm_head``)."""
    modules = list(modules)
    if modules == [ALL_LINEAR]:
        return sorted(family.linear_names)
    allowed = sorted({*family.linear_names, *also})
    for name in modules:
        if name == ALL_LINEAR:
            raise UserError(
                f"lora_target_modules: {ALL_LINEAR} stands alone (it means {', '.join(sorted(family.linear_names))}); "
                "to add another layer, list every name"
            )
        if name not in allowed:
            raise UserError(
                f"lora_target_modules: {name!r} is not a linear layer of a {family.label} block; "
                f"choose from {', '.join(allowed)} (or {ALL_LINEAR})"
            )
    return sorted(set(modules))


def linear_parent(name: str) -> str:
    """The submodule that holds linear ``name`` in a decoder block (``self_attn``, ``mlp``)."""
    return _PARENTS[name]


def chat_template(name: str) -> str:
    """The text of a chat template shipped in templates/ (the families' real templates)."""
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")

"""The linear layers LoRA adapts in a Llama-family model, and the names PEFT gives them.

PEFT names a LoRA tensor by the module path of the linear it adapts, as in the Hugging Face model
(``model.layers.3.self_attn.q_proj``); the initial weights (init.py) and the dropout masks
(dropout.py) are keyed by the same paths, so a backend that builds its model differently (the
jax backend stacks the layers) still draws exactly what the torch backend draws.
"""

from __future__ import annotations

import re

from loraswitch.core.errors import UserError

# The projections of one decoder block and the submodule that holds each, in block order. The
# position in this table is the module's number in the dropout key (dropout.py), never reordered.
PROJECTIONS = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
    "qkv_proj": "self_attn",  # Phi-3's fused q, k, v
    "gate_up_proj": "mlp",  # Phi-3's fused gate, up
}
# What "all-linear" means where no model family is at hand (an adapter_config.json read alone):
# the seven linears of a Llama-style block. Backends resolve it through the family registry.
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HEAD = "lm_head"  # outside the blocks; the torch backend can adapt it too
# Numbers 0-7 predate the fused projections, which came after lm_head: never renumbered.
MODULE_NUMBERS = {
    **{name: i for i, name in enumerate(LLAMA_PROJECTIONS)},
    HEAD: 7,
    "qkv_proj": 8,
    "gate_up_proj": 9,
}
ALL_LINEAR = "all-linear"  # PEFT's shorthand: every linear layer but the output layer
# What PEFT targets when adapter_config.json has no target_modules (its default for llama and mistral).
PEFT_DEFAULT_TARGETS = ("q_proj", "v_proj")

_BLOCK_PATH = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)$")


def resolve_target_modules(names: list[str] | tuple[str, ...] | str, origin: str = "lora_target_modules") -> list[str]:
    """Short module names, sorted and without repeats; "all-linear" stands for the seven projections."""
    listed = [names] if isinstance(names, str) else list(names)
    if ALL_LINEAR in listed:
        if len(listed) > 1:
            raise UserError(f"{origin}: {ALL_LINEAR!r} already names every projection; give it alone")
        return sorted(LLAMA_PROJECTIONS)
    return sorted(set(listed))


def module_path(name: str, layer: int | None = None) -> str:
    """The PEFT module path of a projection in ``layer`` (or of lm_head)."""
    if name == HEAD:
        return HEAD
    return f"model.layers.{layer}.{PROJECTIONS[name]}.{name}"


def module_paths(num_layers: int, targets: list[str]) -> list[str]:
    """Every adapted module path in the model's order (layer by layer, then lm_head)."""
    paths = [module_path(name, layer) for layer in range(num_layers) for name in PROJECTIONS if name in targets]
    return paths + ([HEAD] if HEAD in targets else [])


def dropout_site(path: str) -> tuple[int, int]:
    """(layer, module number) of a module path, the coordinates of its dropout key."""
    if path == HEAD:
        return 0, MODULE_NUMBERS[HEAD]
    match = _BLOCK_PATH.match(path)
    if not match or match.group(3) not in PROJECTIONS:
        raise ValueError(f"{path!r} is not the module path of a Llama projection or lm_head")
    return int(match.group(1)), MODULE_NUMBERS[match.group(3)]

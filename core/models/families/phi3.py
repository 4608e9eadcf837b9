"""Phi-3 and Phi-4-mini (``Phi3ForCausalLM``): a Llama block whose linears are fused.

- ``qkv_proj`` is one linear whose output is [q | k | v], ``gate_up_proj`` one whose output is
  [gate | up] (transformers splits them in that order; the jax model splits the same output, it
  never reorders weights, so LoRA on the fused modules keeps peft's names and shapes);
- ``sliding_window`` (when set) applies to every layer, as in Mistral;
- no biases.

Refused in one line: the ``longrope`` (``su``) rope scaling of the 128k-context checkpoints,
which switches between two frequency tables with the sequence length (not implemented in the
hand-written model), and a ``partial_rotary_factor`` other than 1 (Phi-4-mini's 0.75).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.models.families.family import Family
from loraswitch.core.models.families.spec import optional_window, rope_parameters

PHI3_LINEARS = (("qkv_proj", "self_attn"), ("o_proj", "self_attn"), ("gate_up_proj", "mlp"), ("down_proj", "mlp"))


def _phi3(config: dict[str, Any], file: Path, layers: int) -> dict[str, Any]:
    params = rope_parameters(config, file)
    kind = params.get("rope_type", params.get("type"))
    if kind in ("longrope", "su"):
        raise UserError(
            f"{file}: rope_scaling type {kind!r} (Phi-3's long-context scaling) is not supported; "
            "use a 4k-context checkpoint (rope_scaling null)"
        )
    rotary = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if rotary != 1.0:
        raise UserError(
            f"{file}: partial_rotary_factor {rotary!r} is not supported (only 1.0: rope on every dimension)"
        )
    return {"layer_windows": (optional_window(config, file),) * layers}


PHI3 = Family(
    "Phi3ForCausalLM",
    "phi3",
    "Phi-3",
    _phi3,
    linears=PHI3_LINEARS,
    chat_template="phi3.jinja",
    special_tokens=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
)

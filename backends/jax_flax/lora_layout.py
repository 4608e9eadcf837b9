"""The jax backend's LoRA layout against PEFT's: stacked per-linear arrays <-> one tensor per layer.

The model keeps, per targeted linear, A as [L, in, r] and B as [L, r, out] (every layer in one
array, ``x @ A``); PEFT names one tensor per layer and module, A [r, in] and B [out, r]
(core/adapters/peft_format.py). Adapters and AdamW moments have the same shapes, so both cross
the boundary through these two functions. Nothing here is a file format: the core owns that.
"""

from __future__ import annotations

import numpy as np

from loraswitch.core.adapters.modules import module_path
from loraswitch.core.adapters.peft_format import tensor_name
from loraswitch.core.models.families import ModelSpec, linear_parent


def state_name(name: str, which: str) -> str:
    """Name of a LoRA array in the model's LoRA state (see trees.path_name)."""
    return f"layers/{linear_parent(name)}/{name}/lora_{which.lower()}"


def module_features(spec: ModelSpec, targets: list[str]) -> dict[str, tuple[int, int]]:
    """(in, out) features of every adapted module path, as the core's init and format take them."""
    dims = spec.linear_dims()
    return {module_path(name, layer): dims[name] for layer in range(spec.num_layers) for name in targets}


def to_peft(stacked: dict[str, np.ndarray], spec: ModelSpec, targets: list[str]) -> dict[str, np.ndarray]:
    """State name -> [L, in, r] / [L, r, out] arrays, as PEFT tensors [r, in] / [out, r] (fp32)."""
    out = {}
    for layer in range(spec.num_layers):
        for name in targets:
            path = module_path(name, layer)
            for which in ("A", "B"):
                out[tensor_name(path, which)] = np.ascontiguousarray(
                    np.asarray(stacked[state_name(name, which)][layer], np.float32).T
                )
    return out


def from_peft(tensors: dict[str, np.ndarray], spec: ModelSpec, targets: list[str], r: int) -> dict[str, np.ndarray]:
    """PEFT tensors (all present, shapes checked by the core) as stacked state arrays (fp32)."""
    dims = spec.linear_dims()
    out = {}
    for name in targets:
        n_in, n_out = dims[name]
        a = np.empty((spec.num_layers, n_in, r), np.float32)
        b = np.empty((spec.num_layers, r, n_out), np.float32)
        for layer in range(spec.num_layers):
            path = module_path(name, layer)
            a[layer] = tensors[tensor_name(path, "A")].T
            b[layer] = tensors[tensor_name(path, "B")].T
        out[state_name(name, "A")], out[state_name(name, "B")] = a, b
    return out

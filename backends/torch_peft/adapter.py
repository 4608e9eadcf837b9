"""The torch side of the PEFT format: the LoRA parameters under their PEFT names, as arrays and back.

Reading, checking and writing adapter files is the core's (core/adapters/peft_format.py); peft's
parameter names are PEFT's file names with the adapter name inserted
(``...q_proj.lora_A.default.weight``), so the mapping is one string replacement.
"""

from __future__ import annotations

import numpy as np
import torch

from loraswitch.core.adapters.peft_format import module_of

ADAPTER_NAME = "default"


def lora_parameters(peft_model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """LoRA parameters under their PEFT file names (peft's names without the adapter name),
    in module order; the same names key the optimizer state."""
    out = {}
    for name, param in peft_model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            out[name.replace(f".{ADAPTER_NAME}.", ".")] = param
    return out


def module_features(params: dict[str, torch.nn.Parameter]) -> dict[str, tuple[int, int]]:
    """(in, out) features of every adapted module path, read off A [r, in] and B [out, r]."""
    out = {}
    for name, param in params.items():
        path, which = module_of(name)
        if which == "A":
            out[path] = (int(param.shape[1]), int(params[name.replace(".lora_A.", ".lora_B.")].shape[0]))
    return out


def shapes(params: dict[str, torch.nn.Parameter]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in params.items()}


def to_arrays(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """fp32 host copies, by the same names."""
    return {name: t.detach().float().cpu().numpy() for name, t in tensors.items()}


def copy_into(params: dict[str, torch.nn.Parameter], arrays: dict[str, np.ndarray]) -> None:
    """Copy ``arrays`` (PEFT names, PEFT layout) into the parameters, on their device and dtype."""
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(torch.from_numpy(np.ascontiguousarray(arrays[name])).to(device=param.device, dtype=param.dtype))

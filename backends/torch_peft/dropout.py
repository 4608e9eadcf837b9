"""Portable LoRA dropout in torch: peft's ``nn.Dropout`` modules replaced by the core's hash.

``core/adapters/dropout.py`` defines the mask; this module computes it with int64 tensors
(``wide=True``: values below 2^32, products below 2^63, masked to 32 bits), so it equals the
numpy reference and the jax backend bit for bit. Every replaced module reads its (token key,
feature key) from one shared int64 table [layers, modules, 2] that the backend overwrites in place
before each micro-step: the keys change every micro-step, the compiled graph does not (a
torch.compile'd forward reads the table as a tensor, it is never a Python constant).

Token indices are global: under data parallelism a process adds the index of its first row.
The lm_head (a torch-only target) sees only the rows the loss gathers, so the loss passes their
global token indices through ``head_tokens``.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

import numpy as np
import torch

from loraswitch.core.adapters import dropout as portable
from loraswitch.core.adapters.modules import dropout_site

_HEAD_TOKENS: ContextVar[torch.Tensor | None] = ContextVar("loraswitch_head_tokens", default=None)


@contextlib.contextmanager
def head_tokens(tokens: torch.Tensor | None):
    """Global token indices [N] of the rows an [N, H] input to an adapted lm_head holds."""
    reset = _HEAD_TOKENS.set(tokens)
    try:
        yield
    finally:
        _HEAD_TOKENS.reset(reset)


class KeyTable:
    """The micro-step's dropout keys on the device, shared by every PortableDropout of a model."""

    def __init__(self, seed: int, num_layers: int, device: torch.device, first_row: int = 0):
        self.seed, self.num_layers, self.first_row = seed, num_layers, first_row
        self.table = torch.zeros((num_layers, portable.N_MODULES, 2), dtype=torch.int64, device=device)

    def set_step(self, step: int, micro: int) -> None:
        keys = torch.from_numpy(portable.key_table(self.seed, step, micro, self.num_layers).astype(np.int64))
        if self.table.device.type == "cuda":
            keys = keys.pin_memory()  # a fresh pinned buffer: the async copy never reads a reused one
        self.table.copy_(keys, non_blocking=True)


class PortableDropout(torch.nn.Module):
    """Inverted dropout whose mask is the core's hash of (keys of this module, token, feature)."""

    def __init__(self, rate: float, layer: int, module: int, keys: KeyTable):
        super().__init__()
        self.rate, self.layer, self.module = rate, layer, module
        self.threshold, self.scale = portable.threshold(rate), portable.scale(rate)
        self.keys = keys  # a plain attribute, not a buffer: not saved, not broadcast by DDP
        # This module's row of the table, as a view: a tensor input to a compiled layer, where the
        # Python ints (layer, module) would be constants, one compiled graph per layer.
        self.key = keys.table[layer, module]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keys = self.key
        features = torch.arange(x.shape[-1], device=x.device, dtype=torch.int64)
        hashes = portable.element_hash(keys[0], keys[1], self._tokens(x), features, wide=True)
        return torch.where(hashes >= self.threshold, x * self.scale, torch.zeros((), dtype=x.dtype, device=x.device))

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            tokens = _HEAD_TOKENS.get()
            if tokens is None:
                raise RuntimeError("an adapted lm_head needs the token indices of its rows (dropout.head_tokens)")
            return tokens
        rows, length = x.shape[0], x.shape[1]
        first = self.keys.first_row
        row_index = torch.arange(first, first + rows, device=x.device, dtype=torch.int64)
        return row_index[:, None] * length + torch.arange(length, device=x.device, dtype=torch.int64)[None, :]

    def extra_repr(self) -> str:
        return f"p={self.rate}, layer={self.layer}, module={self.module}, portable"


def install(peft_model: torch.nn.Module, keys: KeyTable, adapter_name: str = "default") -> int:
    """Replace every peft LoRA dropout of ``peft_model`` by a PortableDropout; returns how many."""
    count = 0
    prefix = "base_model.model."
    for name, module in peft_model.named_modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict) or adapter_name not in dropouts:
            continue
        current = dropouts[adapter_name]
        if not isinstance(current, torch.nn.Dropout):
            continue  # nn.Identity: lora_dropout is 0
        layer, number = dropout_site(name.removeprefix(prefix))
        dropouts[adapter_name] = PortableDropout(current.p, layer, number, keys)
        count += 1
    return count

"""``random:<shape>`` base weights drawn on the device, bit for bit the core's (random_values).

torch has partial uint32 support, so the hash runs in int64 (``wide=True``: every product stays
below 2^63 and is masked to 32 bits). Rows are drawn a block at a time so a 128k-vocabulary
embedding never needs a full-size int64 temporary.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from loraswitch.core.models import random_values

_BLOCK_ELEMENTS = 1 << 24


def fill_rows(out: torch.Tensor, seed: int, name: str, full_shape: tuple[int, ...], first_row: int = 0) -> None:
    """Write rows ``first_row ..`` of tensor ``name`` (HF name, HF ``full_shape``) into ``out``,
    which holds ``out.shape[0]`` consecutive rows of it (a whole tensor, or an FSDP shard)."""
    if random_values.is_norm(name):
        out.fill_(1.0)
        return
    random_values.check_size(name, full_shape)
    if out.numel() == 0:
        return
    k0, k1 = random_values.tensor_keys(seed, name)
    row = 1
    for n in full_shape[1:]:
        row *= n
    step = torch.tensor(random_values.STEP, dtype=torch.float32, device=out.device)
    flat = out.view(out.shape[0], -1) if out.dim() > 1 else out.view(-1, 1)
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(row, 1))
    for r in range(0, flat.shape[0], rows_per_block):
        n_rows = min(rows_per_block, flat.shape[0] - r)
        start = (first_row + r) * row
        index = torch.arange(start, start + n_rows * row, dtype=torch.int64, device=out.device)
        b = random_values.bits(index, k0, k1, wide=True)
        values = (b - random_values.HALF).to(torch.float32) * step
        flat[r : r + n_rows].copy_(values.view(n_rows, -1).to(out.dtype))


def fill_model(causal_lm: torch.nn.Module, seed: int, local_rows: Callable | None = None) -> None:
    """Every base parameter of a (possibly peft-wrapped) causal LM, by its HF name; LoRA
    weights are left alone (the core's initial adapter goes there). ``local_rows(param)`` gives
    (this process's tensor, its first row) of a sharded parameter; default: the whole tensor."""
    with torch.no_grad():
        for name, param in causal_lm.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                continue
            local, first_row = local_rows(param) if local_rows is not None else (param.data, 0)
            fill_rows(local, seed, name.replace(".base_layer.", "."), tuple(param.shape), first_row)

"""Which fused kernel SDPA attention uses on CUDA.

torch tries its SDPA kernels in a fixed priority order (flash attention first; cuDNN's fused
attention last). On Hopper (compute capability 9.0) cuDNN's kernel is the faster one for the
training shapes this project benchmarks, so there it goes first; when a call does not suit it
(an explicit mask, a head size it refuses), torch falls through to the next kernel in the order,
so the choice changes speed, never which inputs work. The order is set around each forward call,
outside any torch.compile'd function, so compilation traces (and bakes in) the same choice.

    LORASWITCH_TORCH_ATTENTION   auto | cudnn | flash | default
        auto: cudnn first on compute capability >= 9.0, torch's default order elsewhere
        cudnn / flash: that kernel first; default: torch's own order
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager

import torch

from loraswitch.core.errors import UserError

CHOICES = ("auto", "cudnn", "flash", "default")


def attention_choice(device: torch.device) -> str:
    """The resolved LORASWITCH_TORCH_ATTENTION for ``device``: cudnn, flash or default."""
    choice = os.environ.get("LORASWITCH_TORCH_ATTENTION", "auto").strip() or "auto"
    if choice not in CHOICES:
        raise UserError(f"LORASWITCH_TORCH_ATTENTION={choice!r}: expected one of {', '.join(CHOICES)}")
    if device.type != "cuda":
        return "default"
    if choice == "auto":
        return "cudnn" if torch.cuda.get_device_capability(device) >= (9, 0) else "default"
    return choice


def attention_context(choice: str) -> Callable[[], ContextManager]:
    """A factory of fresh context managers that put ``choice``'s kernel first (SDPA keeps every
    other kernel as a fallback, in torch's order)."""
    if choice == "default":
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    first = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[choice]
    rest = [
        b
        for b in (
            SDPBackend.FLASH_ATTENTION,
            SDPBackend.CUDNN_ATTENTION,
            SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.MATH,
        )
        if b != first
    ]
    if "set_priority" not in inspect.signature(sdpa_kernel).parameters:  # torch < 2.6
        return contextlib.nullcontext
    return lambda: sdpa_kernel([first, *rest], set_priority=True)


def kernel_used(
    context: Callable[[], ContextManager],
    device: torch.device,
    heads: int,
    kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    masked: bool = False,
) -> str:
    """The kernel SDPA picks under ``context`` for a training call of this model's head shape
    (with grouped-query heads as transformers passes them), for describe(): causal, or with an
    explicit boolean mask (``masked``: sliding windows and packed rows, which is_causal cannot say)."""
    if device.type != "cuda":
        return "sdpa"
    try:
        q = torch.zeros(1, heads, 128, head_dim, device=device, dtype=dtype, requires_grad=True)
        kv = torch.zeros(1, kv_heads, 128, head_dim, device=device, dtype=dtype, requires_grad=True)
        mask = torch.ones(1, 1, 128, 128, device=device, dtype=torch.bool).tril() if masked else None
        with context():
            index = torch._fused_sdp_choice(
                q, kv, kv, attn_mask=mask, is_causal=not masked, enable_gqa=heads != kv_heads
            )
        from torch.nn.attention import SDPBackend

        return f"sdpa ({SDPBackend(index).name.lower()})"
    except Exception as e:  # private API: report, never fail on it
        return f"sdpa (kernel unknown: {type(e).__name__})"

"""How each decoder layer runs in a training step: its checkpoint policy and regional compilation.

Every layer's ``forward`` becomes one shared function of (layer, policy, inputs)
(``recompute.run_layer``). With ``compile`` on, that function is torch.compile'd once and the
compiled code serves every layer: the layer is an input, not a constant, so the layers share
one graph (the first layer gets a second one: its input, the frozen embedding's output, needs no
gradient; Gemma 3's sliding and global layers share theirs, the window being in the mask).
Compiling the whole decoder instead traced every layer again: 150 s of warm-up for llama-1b on an
H200, and unfinished after 330 s for gemma3-1b's 26 layers or 10 minutes for llama-8b; per-layer
code compiles in about the time of two layers whatever the depth (33 s, 54 s, 38 s). The embedding, rope tables, masks and final norm
run eagerly between the compiled layers (a few small kernels per forward).

Compiled calls are used only inside ``compiled_calls()`` (the backend's training and evaluation
forward); generation and ``logits`` call the same layers eagerly, because a growing KV cache
would recompile for every new length.
"""

from __future__ import annotations

import contextlib
import functools
from contextvars import ContextVar

import torch

from loraswitch.backends.torch_peft.recompute import run_layer

_COMPILED: ContextVar[bool] = ContextVar("loraswitch_compiled_layers", default=False)


@contextlib.contextmanager
def compiled_calls():
    """Inside this block, layers installed with ``compile=True`` run their compiled code."""
    reset = _COMPILED.set(True)
    try:
        yield
    finally:
        _COMPILED.reset(reset)


def install(layers: torch.nn.ModuleList, policy: str, compile: bool = False) -> int:
    """Route every layer's forward through ``run_layer`` under ``policy``, compiled once for all
    layers when ``compile``; returns how many layers it changed (0: policy off, no compile)."""
    if policy == "off" and not compile:
        return 0
    compiled = torch.compile(run_layer) if compile else None
    for layer in layers:

        @functools.wraps(layer.forward)
        def forward(*args, _layer=layer, **kwargs):
            call = compiled if compiled is not None and _COMPILED.get() else run_layer
            return call(_layer, policy, *args, **kwargs)

        forward.checkpoint_policy = policy  # type: ignore[attr-defined]  # for describe() and tests
        layer.forward = forward
    return len(layers)

"""Activation checkpointing of the decoder layers (config ``gradient_checkpointing``).

Each decoder layer's forward runs under ``torch.utils.checkpoint`` (non-reentrant: it works with
a frozen base, torch.compile, DDP, and FSDP2, whose hooks stay outside on the module's
``__call__``); layer_calls.py installs it. The wrapping is ours rather than transformers' switch
because that switch was renamed between the versions we support (``gradient_checkpointing_enable``
became ``activation_checkpointing_enable``) and has no selective policy.

- ``full``: only each layer's input is kept; the whole layer runs again in backward.
- ``dots``: torch's selective checkpointing keeps the outputs of matrix products and attention
  and recomputes the rest (norms, activations, rope, dropout masks) — what JAX's
  ``dots_with_no_batch_dims_saveable`` keeps, plus attention, whose recomputation costs a
  forward attention per layer.

Dropout masks are the same when recomputed: portable masks are a hash of their coordinates, and
checkpoint restores torch's RNG state for the framework's masks; random ops are kept anyway.
"""

from __future__ import annotations

import torch


def _saved_ops() -> set:
    aten = torch.ops.aten
    names = [
        "mm",
        "addmm",
        "bmm",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "native_dropout",
        "bernoulli",
        "rand_like",
    ]
    return {getattr(aten, n).default for n in names if hasattr(aten, n) and hasattr(getattr(aten, n), "default")}


def _dots_context():
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    saved = _saved_ops()

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in saved else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def run_layer(layer: torch.nn.Module, policy: str, *args, **kwargs):
    """``layer``'s own forward under ``policy`` (off | full | dots); nothing is recomputed when
    no gradient is taken (evaluation, generation). The layer is an argument, not a closure, so one
    torch.compile of this function serves every layer of the decoder (layer_calls.py)."""
    forward = type(layer).forward
    if policy == "off" or not torch.is_grad_enabled():
        return forward(layer, *args, **kwargs)
    from torch.utils.checkpoint import checkpoint

    options: dict = {"use_reentrant": False}
    if policy == "dots":
        options["context_fn"] = _dots_context
    return checkpoint(forward, layer, *args, **options, **kwargs)

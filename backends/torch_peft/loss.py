"""Token cross-entropy over target positions only, computed chunk by chunk.

Why: with a 128k vocabulary one micro-batch of 4 x 2048 tokens has 4 GiB of fp32 logits, more
again for their gradient, and most of it is thrown away straight after the loss. Here only the
rows that predict a target are gathered, logits exist for one chunk of rows at a time, and the
gradient with respect to the hidden states is computed in the same pass (softmax - one_hot),
so nothing has to be recomputed in backward. The lm_head weight must be frozen (LoRA does not
train it); when it trains, ``target_cross_entropy`` falls back to autograd through the layer.

Numerics match ``F.cross_entropy`` on fp32 logits: logits are upcast to fp32 before the
log-sum-exp, as transformers does. On CPU in fp32 the result equals the plain computation up
to summation order.

``softcap`` (Gemma 2's ``final_logit_softcapping``): the logits are cap * tanh(logits / cap), as
transformers' Gemma2ForCausalLM computes them, and the gradient carries the factor 1 - tanh^2.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from loraswitch.core.types import IGNORE_INDEX

# fp32 elements of one chunk of logits (1 GiB); a chunk is at least MIN_CHUNK_ROWS rows
LOGITS_BUDGET = 1 << 28
MIN_CHUNK_ROWS = 256


def target_positions(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``hidden.reshape(B * T, H)`` that predict a target, and those targets.

    HF convention: position t predicts labels[t + 1]. Computed on the host from the numpy
    batch, so selecting the rows never waits for the device.
    """
    batch, length = labels.shape
    following = labels[:, 1:]
    b, t = np.nonzero(following != IGNORE_INDEX)
    return (b * length + t).astype(np.int64), following[b, t].astype(np.int64)


def chunk_rows(vocab_size: int) -> int:
    rows = LOGITS_BUDGET // max(vocab_size, 1)
    return max(MIN_CHUNK_ROWS, rows - rows % MIN_CHUNK_ROWS)


def _softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return logits if cap is None else torch.tanh(logits / cap) * cap


def chunk_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None = None
) -> torch.Tensor:
    """Sum of cross-entropy of ``hidden @ weight.T`` against ``targets`` (no ignored rows)."""
    logits = _softcap((hidden @ weight.t()).float(), softcap)
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    return (torch.logsumexp(logits, dim=-1) - picked).sum()


def chunk_loss_and_grad(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``chunk_loss`` and its gradient with respect to ``hidden``, in one pass."""
    logits = _softcap((hidden @ weight.t()).float(), softcap)
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    lse = torch.logsumexp(logits, dim=-1)
    loss = (lse - picked).sum()
    probs = torch.exp(logits - lse[:, None])
    probs = probs.scatter_add(1, targets[:, None], torch.full_like(picked[:, None], -1.0))
    if softcap is not None:  # d(cap * tanh(raw / cap)) / d raw
        probs = probs * (1 - torch.square(logits / softcap))
    grad_hidden = probs.to(hidden.dtype) @ weight
    return loss, grad_hidden


class _FrozenHeadCrossEntropy(torch.autograd.Function):
    """Sum of target cross-entropy through a frozen output layer, gradient computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, rows, loss_and_grad, softcap):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], rows):
            end = min(start + rows, hidden.shape[0])
            loss, grad[start:end] = loss_and_grad(hidden[start:end], weight, targets[start:end], softcap)
            total += loss
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None, None, None


def target_cross_entropy(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    targets: torch.Tensor,
    *,
    rows: int | None = None,
    loss_fn: Callable = chunk_loss,
    loss_and_grad_fn: Callable = chunk_loss_and_grad,
    tokens: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Sum of cross-entropy of ``head(hidden)`` against ``targets``: ``hidden`` [N, H] holds only
    rows that predict a target. ``loss_fn``/``loss_and_grad_fn`` may be torch.compile'd versions
    of the chunk functions above. ``tokens`` [N]: the rows' global token indices, which an
    adapted lm_head's portable dropout keys its mask by (dropout.head_tokens). ``softcap``: the
    model's final-logit soft-capping (Gemma 2), or None."""
    if hidden.shape[0] == 0:
        return hidden.sum(dtype=torch.float32) * 0.0
    weight = getattr(head, "weight", None)
    frozen = isinstance(head, torch.nn.Linear) and head.bias is None and not weight.requires_grad
    if not frozen:  # LoRA on lm_head: let autograd handle it, one chunk at a time
        return _trainable_head_cross_entropy(
            hidden, head, targets, rows or chunk_rows(head.out_features), tokens, softcap
        )
    rows = rows or chunk_rows(weight.shape[0])
    if not hidden.requires_grad:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            total = total + loss_fn(hidden[start : start + rows], weight, targets[start : start + rows], softcap)
        return total
    return _FrozenHeadCrossEntropy.apply(hidden, weight, targets, rows, loss_and_grad_fn, softcap)


def _trainable_head_cross_entropy(hidden, head, targets, rows, tokens=None, softcap=None):
    from torch.utils.checkpoint import checkpoint

    from loraswitch.backends.torch_peft.dropout import head_tokens

    def piece(h, y, t):
        # The token indices travel as an argument, so the recomputation in backward sees them too.
        with head_tokens(t):
            return F.cross_entropy(_softcap(head(h).float(), softcap), y, reduction="sum")

    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], rows):
        h, y = hidden[start : start + rows], targets[start : start + rows]
        t = None if tokens is None else tokens[start : start + rows]
        total = total + (checkpoint(piece, h, y, t, use_reentrant=False) if torch.is_grad_enabled() else piece(h, y, t))
    return total

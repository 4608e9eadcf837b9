"""The tiny language model: forward, loss and hand-written backward, as pure numpy functions.

    h      = E[ids]                                  frozen embedding   E      [V, d]
    u      = h @ W_proj.T + s * drop(h) @ A.T @ B.T  frozen linear      W_proj [d, d], LoRA A [r, d], B [d, r]
    logits = u @ W_out.T                             frozen head        W_out  [V, d]

Position i predicts token i + 1 from token i alone (a bigram model). Shapes follow PyTorch's
``nn.Linear`` ([out, in]) so the LoRA tensors are already in PEFT's layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loraswitch.core.api import IGNORE_INDEX, keep_mask, lora_a, scale

MAX_DIM = 32  # hidden sizes above this are capped: the model only has to be a fast stand-in


@dataclass
class Frozen:
    """The base weights. Drawn from ``init_seed`` rather than read from safetensors."""

    embed: np.ndarray  # [V, d]
    proj: np.ndarray  # [d, d]
    head: np.ndarray  # [V, d]


def init_frozen(vocab: int, dim: int, seed: int, dtype=np.float32) -> Frozen:
    """Unit-variance embeddings and 1/sqrt(d)-scaled linears, so initial logits are O(1)."""
    rng = np.random.default_rng([seed, 1])
    embed = rng.standard_normal((vocab, dim))
    proj = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    head = rng.standard_normal((vocab, dim)) / np.sqrt(dim)
    return Frozen(embed.astype(dtype), proj.astype(dtype), head.astype(dtype))


MODULE = "proj"  # the model's one adapted linear: its PEFT module path
DROPOUT_SITE = (0, 0)  # its (layer, module) coordinates in the core's dropout key


def init_lora(dim: int, r: int, seed: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The core's initial adapter (loraswitch.core.api.lora_a): A uniform(-1/sqrt(in), 1/sqrt(in))
    from a generator seeded by (seed, "proj"), B zero, so the adapted model starts exactly equal
    to the base model, and every backend given this module path draws the same A."""
    return lora_a(seed, MODULE, r, dim).astype(dtype), np.zeros((dim, r), dtype)


def dropout_mask(
    shape: tuple[int, int, int], p: float, seed: int, step: int, micro: int, dtype, masks: str = "portable"
) -> np.ndarray | None:
    """Inverted dropout mask [B, T, d] for the LoRA input of a micro-batch of B rows of length T,
    stateless, so a resumed run draws exactly the masks the uninterrupted run drew. ``portable``
    (the default): the core's hash of (seed, step, micro, layer 0, module 0, token, feature), the
    mask every loraswitch backend computes; ``framework``: numpy's own generator seeded by
    (seed, 3, step, micro)."""
    if p <= 0:
        return None
    if masks == "portable":
        keep = keep_mask(seed, step, micro, *DROPOUT_SITE, shape, p)
        return np.where(keep, np.asarray(scale(p), dtype), np.zeros((), dtype))
    rng = np.random.default_rng([seed, 3, step, micro])
    keep = rng.random(shape) >= p
    return (keep / (1.0 - p)).astype(dtype)


def targets(input_ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(current token, next-token label) for every position that carries loss. HF convention:
    logits at position i are scored against labels[i + 1]."""
    nxt = labels[:, 1:]
    where = nxt != IGNORE_INDEX
    return input_ids[:, :-1][where], nxt[where]


def forward(
    frozen: Frozen, a: np.ndarray, b: np.ndarray, scale: float, ids: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, dict]:
    """Logits for token ids of any shape, and what the backward pass needs."""
    h = frozen.embed[ids]
    hd = h if mask is None else h * mask
    low = hd @ a.T  # [..., r]
    u = h @ frozen.proj.T + scale * (low @ b.T)
    logits = u @ frozen.head.T
    return logits, {"hd": hd, "low": low}


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row cross-entropy and softmax, computed stably (max subtracted)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=-1, keepdims=True)
    probs = exp / total
    ce = np.log(total[..., 0]) - np.take_along_axis(shifted, labels[..., None], axis=-1)[..., 0]
    return ce, probs


def loss_and_grads(
    frozen: Frozen,
    a: np.ndarray,
    b: np.ndarray,
    scale: float,
    ids: np.ndarray,
    labels: np.ndarray,
    weight: float,
    mask: np.ndarray | None = None,
):
    """``weight * sum(cross-entropy)`` over the given (token, label) rows and its gradients
    with respect to A and B. ``mask`` is the dropout mask for ``ids`` (None: no dropout)."""
    logits, saved = forward(frozen, a, b, scale, ids, mask)
    ce, probs = cross_entropy(logits, labels)
    dlogits = probs
    dlogits[np.arange(len(labels)), labels] -= 1.0
    dlogits *= weight
    du = dlogits @ frozen.head  # [N, d]
    grad_b = scale * (du.T @ saved["low"])  # [d, r]
    dlow = scale * (du @ b)  # [N, r]
    grad_a = dlow.T @ saved["hd"]  # [r, d]
    return weight * ce.sum(), grad_a, grad_b

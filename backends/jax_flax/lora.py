"""A linear layer with a frozen base kernel and a trainable low-rank update, as peft defines it:

    y = x @ W + (dropout(x) @ A @ B) * scaling,   scaling = alpha / r   (alpha / sqrt(r) with rsLoRA)

W is an ``nnx.Param`` kept in the compute dtype; A [in, r] and B [r, out] are ``nnx.LoRAParam``
kept in fp32 (optimizer precision) and cast to the compute dtype for the matmuls. Splitting the
model with the ``nnx.LoRAParam`` filter is what puts only A and B in the optimizer.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def lora_scaling(alpha: float, rank: int, use_rslora: bool) -> float:
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def init_lora_a(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """peft's default: kaiming_uniform(a=sqrt(5)) on lora_A.weight [r, in], i.e.
    uniform(-1/sqrt(in), 1/sqrt(in)); ``shape`` is [..., in, r] (our layout)."""
    bound = 1.0 / math.sqrt(shape[-2])
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout (as torch.nn.Dropout); identity without a key (eval) or at rate 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class LoRALinear(nnx.Module):
    """One (possibly layer-stacked) linear; with ``lora_a is None`` it is a plain frozen linear."""

    def __init__(self, kernel: jax.Array, lora_a: jax.Array | None = None, lora_b: jax.Array | None = None,
                 *, scaling: float = 1.0, dropout_rate: float = 0.0):
        self.kernel = nnx.Param(kernel)
        self.lora_a = nnx.LoRAParam(lora_a) if lora_a is not None else None
        self.lora_b = nnx.LoRAParam(lora_b) if lora_b is not None else None
        self.scaling = scaling
        self.dropout_rate = dropout_rate

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        kernel = self.kernel[...]
        y = x @ kernel
        if self.lora_a is None:
            return y
        a = self.lora_a[...].astype(x.dtype)
        # Scaling folded into B (an [r, out] multiply in fp32) instead of the [B, T, out] product.
        b = (self.lora_b[...] * self.scaling).astype(x.dtype)
        return y + (dropout(x, self.dropout_rate, key) @ a) @ b

"""A linear layer with a frozen base kernel and a trainable low-rank update, as peft defines it:

    y = x @ W + bias + (dropout(x) @ A @ B) * scaling,   scaling = alpha / r   (alpha / sqrt(r) with rsLoRA)

W and the optional bias (Qwen2's q/k/v) are ``nnx.Param`` kept in the compute dtype; A [in, r] and B [r, out] are ``nnx.LoRAParam``
kept in fp32 (optimizer precision) and cast to the compute dtype for the matmuls. Splitting the
model with the ``nnx.LoRAParam`` filter is what puts only A and B in the optimizer.

``fused_projections`` computes several such layers that read the same input (q, k, v; gate, up)
as one matrix product: [x | x_A] @ [[W_q W_k W_v]; blockdiag(B_q, B_k, B_v) * scaling]. The
LoRA B products and their additions to the base outputs disappear into that one product, x is
read once instead of three times, and in backward one product gives the input gradient of all
of them (docs/bench/NOTES.md has what it was predicted to save and what it saved). Biases are
added to the fused output as one concatenated vector (zeros for a linear without one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from loraswitch.core.adapters import dropout as portable

# The checkpoint_name of a fused product's output. The product runs inside a custom VJP, whose
# dots the "dots" rematerialisation policy does not see: under it the product is recomputed in
# backward; the policy "dots+fused" (options.py) saves it by this name.
FUSED_NAME = "fused_projection"


def lora_scaling(alpha: float, rank: int, use_rslora: bool) -> float:
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout (as torch.nn.Dropout); identity without a key (eval) or at rate 0.

    ``key`` is either this module's (token key, feature key), uint32 [2], from the core's key
    table (config ``dropout_masks: portable``: the core's hash of the global token and feature
    index, the same mask as every other backend's), or a jax PRNG key (``framework``), whose
    mask compares raw 32-bit random words with rate * 2^32 instead of converting them to floats
    first as ``jax.random.bernoulli`` does. Either way the keep probability is exact to 2^-32
    and the arithmetic stays in the input's dtype (bf16 on GPU), as torch's dropout does."""
    if key is None or rate == 0.0:
        return x
    if rate >= 1.0:
        return jnp.zeros_like(x)
    if key.dtype == jnp.uint32:
        keep = portable_keep(x.shape, key, rate)
    else:
        keep = jax.random.bits(key, x.shape, jnp.uint32) >= np.uint32(portable.threshold(rate))
    return jnp.where(keep, x * jnp.asarray(portable.scale(rate), x.dtype), jnp.zeros((), x.dtype))


def portable_keep(shape: tuple[int, ...], key: jax.Array, rate: float) -> jax.Array:
    """The core's portable keep mask for an input of ``shape`` [..., features] in uint32
    arithmetic (x64 is off; uint32 products wrap mod 2^32 as the hash wants). Inside the jitted
    step the arrays are global, so the row-major position index is the global token index."""
    tokens = jnp.arange(math.prod(shape[:-1]), dtype=jnp.uint32).reshape(shape[:-1])
    features = jnp.arange(shape[-1], dtype=jnp.uint32)
    hashes = portable.element_hash(key[0], key[1], tokens, features, wide=False)
    return hashes >= np.uint32(portable.threshold(rate))


class LoRALinear(nnx.Module):
    """One (possibly layer-stacked) linear; with ``lora_a is None`` it is a plain frozen linear."""

    def __init__(
        self,
        kernel: jax.Array,
        lora_a: jax.Array | None = None,
        lora_b: jax.Array | None = None,
        *,
        bias: jax.Array | None = None,
        scaling: float = 1.0,
        dropout_rate: float = 0.0,
    ):
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(bias) if bias is not None else None
        self.lora_a = nnx.LoRAParam(lora_a) if lora_a is not None else None
        self.lora_b = nnx.LoRAParam(lora_b) if lora_b is not None else None
        self.scaling = scaling
        self.dropout_rate = dropout_rate

    def scaled_b(self, dtype) -> jax.Array:
        # Scaling folded into B (an [r, out] multiply in fp32) instead of the [B, T, out] product.
        return (self.lora_b[...] * self.scaling).astype(dtype)

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        kernel = self.kernel[...]
        y = x @ kernel
        if self.bias is not None:
            y = y + self.bias[...]
        if self.lora_a is None:
            return y
        a = self.lora_a[...].astype(x.dtype)
        return y + (dropout(x, self.dropout_rate, key) @ a) @ self.scaled_b(x.dtype)


def fused_projections(x: jax.Array, linears: Sequence[LoRALinear], keys: Sequence[jax.Array | None]) -> list[jax.Array]:
    """``[linear(x, key) for linear, key in zip(linears, keys)]`` as one matrix product.

    Each LoRA layer keeps its own dropout mask (peft draws one per module), so the x @ A
    products stay one per layer, unless there is no dropout: then one [in, r * m] product."""
    kernels = [lin.kernel[...] for lin in linears]
    widths = [int(k.shape[-1]) for k in kernels]
    kernel = kernels[0] if len(kernels) == 1 else jnp.concatenate(kernels, axis=-1)
    lora = [(lin, key) for lin, key in zip(linears, keys) if lin.lora_a is not None]
    if not lora:
        y = x @ kernel
    else:
        if all(key is None or lin.dropout_rate == 0.0 for lin, key in lora):
            xa = x @ jnp.concatenate([lin.lora_a[...].astype(x.dtype) for lin, _ in lora], axis=-1)
        else:
            xa = jnp.concatenate(
                [dropout(x, lin.dropout_rate, key) @ lin.lora_a[...].astype(x.dtype) for lin, key in lora], axis=-1
            )
        b_rows = _block_rows(linears, widths, x.dtype)
        y = lora_matmul(x, xa, kernel, b_rows)
    if any(lin.bias is not None for lin in linears):
        y = y + _biases(linears, widths, y.dtype)
    y = checkpoint_name(y, FUSED_NAME)
    return [y] if len(widths) == 1 else jnp.split(y, np.cumsum(widths)[:-1].tolist(), axis=-1)


def _biases(linears: Sequence[LoRALinear], widths: list[int], dtype) -> jax.Array:
    """The linears' biases end to end, zeros where a linear has none (Qwen2: q, k, v all have one)."""
    parts = [
        lin.bias[...].astype(dtype) if lin.bias is not None else jnp.zeros(w, dtype) for lin, w in zip(linears, widths)
    ]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def _block_rows(linears: Sequence[LoRALinear], widths: list[int], dtype) -> jax.Array:
    """[sum of ranks, sum of widths]: each LoRA layer's B * scaling in its own column block."""
    total, offset, rows = sum(widths), 0, []
    for lin, width in zip(linears, widths):
        if lin.lora_a is not None:
            rows.append(jnp.pad(lin.scaled_b(dtype), ((0, 0), (offset, total - offset - width))))
        offset += width
    return jnp.concatenate(rows, axis=0)


@jax.custom_vjp
def lora_matmul(x: jax.Array, xa: jax.Array, kernel: jax.Array, b_rows: jax.Array) -> jax.Array:
    """``x @ kernel + xa @ b_rows`` as one product over the concatenated contraction axis.

    Written with a custom VJP because autodiff of the concatenated weight would compute its
    whole gradient ([in + r, out], a product as large as the forward one) to keep the b_rows
    part. ``kernel`` is frozen (LoRA never trains base weights): it gets no gradient."""
    return jnp.concatenate([x, xa], axis=-1) @ jnp.concatenate([kernel, b_rows], axis=0)


def _lora_matmul_fwd(x, xa, kernel, b_rows):
    return lora_matmul(x, xa, kernel, b_rows), (xa, kernel, b_rows)


def _lora_matmul_bwd(residuals, dy):
    xa, kernel, b_rows = residuals
    d_cat = dy @ jnp.concatenate([kernel, b_rows], axis=0).T
    d_in = kernel.shape[0]
    d_b = jnp.einsum("...k,...o->ko", xa, dy).astype(b_rows.dtype)
    return d_cat[..., :d_in], d_cat[..., d_in:], None, d_b


lora_matmul.defvjp(_lora_matmul_fwd, _lora_matmul_bwd)

"""Rotary position embeddings, computed exactly as transformers computes them.

The inverse frequencies are numpy float32 constants (built at trace time), following
transformers' ``_compute_default_rope_parameters`` and ``_compute_llama3_parameters`` step by
step in float32, so logits match the torch model to float32 rounding.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from loraswitch.core.models.families import RopeSpec


def inv_frequencies(rope: RopeSpec, head_dim: int) -> np.ndarray:
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv = (np.float32(1.0) / (np.float32(rope.theta) ** exponents)).astype(np.float32)
    if rope.kind == "linear":
        return (inv / np.float32(rope.factor)).astype(np.float32)
    if rope.kind == "default":
        return inv
    if rope.kind != "llama3":  # the spec's strict check refuses these first, naming config.json
        raise ValueError(f"rope type {rope.kind!r} is not implemented")
    factor, low, high = np.float32(rope.factor), rope.low_freq_factor, rope.high_freq_factor
    old_len = rope.original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = (np.float32(2 * math.pi) / inv).astype(np.float32)
    # Long wavelengths are divided by the factor, short ones kept, the band between interpolated.
    scaled = np.where(wavelen > low_freq_wavelen, inv / factor, inv).astype(np.float32)
    smooth = ((np.float32(old_len) / wavelen - np.float32(low)) / np.float32(high - low)).astype(np.float32)
    smoothed = ((1 - smooth) * scaled / factor + smooth * scaled).astype(np.float32)
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def cos_sin(positions: jnp.ndarray, inv_freq: np.ndarray, dtype) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos and sin [..., T, head_dim] for integer positions, in fp32 then cast (as HF does)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """x [B, T, heads, head_dim]; cos/sin [B or 1, T, head_dim]. HF's rotate_half convention."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]

"""The decoder of every supported family in Flax NNX, written to match transformers number for
number: shared blocks (attention with optional q/k/v biases and per-head q/k RMSNorm, rope, the
gated MLP, RMSNorm, the layer scan) that the family's ``ModelSpec`` (core/models/families)
configures. A family is a description, not a copy of this file.

The decoder blocks are *one* ``Block`` whose every weight carries a leading layer axis; the
forward pass splits it once and runs ``jax.lax.scan`` over the stacked state, so XLA compiles
one block whatever the depth. Module and attribute names follow the HF module paths
(``layers.self_attn.q_proj``), which keeps the PEFT adapter mapping a string join.

Attention is ``jax.nn.dot_product_attention``: the cuDNN kernel on GPU (causal only: with right
padding, real tokens never attend to the pad tokens after them, and pad positions carry no loss),
XLA's elsewhere (causal plus a key-padding mask, so even pad positions match HF's logits). A
sliding window shared by every layer (Mistral) is the kernel's static local window; windows that
differ between layers (Qwen2/Qwen3 with ``use_sliding_window``) ride through the layer scan as
one number per layer and become an explicit mask on XLA's kernel, whatever ``attention`` says.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from loraswitch.backends.jax_flax.lora import FUSED_NAME, LoRALinear, fused_projections
from loraswitch.backends.jax_flax.options import Options
from loraswitch.backends.jax_flax.rope import apply_rope, cos_sin, inv_frequencies
from loraswitch.core.adapters.modules import MODULE_NUMBERS
from loraswitch.core.models.families import ModelSpec
from loraswitch.core.types import IGNORE_INDEX

Cache = tuple[jax.Array, jax.Array]  # keys, values [layers, B, S, kv_heads, head_dim]
FULL_WINDOW = 2**30  # a full-attention layer among sliding ones: a window no sequence reaches


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, offset: float = 0.0) -> jax.Array:
    """HF's RMSNorm (Llama, Qwen2, Qwen3, also on q/k heads): normalise in fp32, cast back, then
    scale. Gemma's (``offset`` 1): scale by (1 + weight) in fp32, then cast back."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if offset:
        return (normed * (offset + weight.astype(jnp.float32))).astype(x.dtype)
    return weight * normed.astype(x.dtype)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """Gemma 2's soft-capping, cap * tanh(x / cap), as transformers computes it; None: x."""
    return x if cap is None else jnp.tanh(x / cap) * cap


def attention_path(spec: ModelSpec, options: Options) -> str:
    """Which attention computes the model's scores, for describe()."""
    if spec.attn_softcap is not None:
        return "xla (exact: attention-logit soft-capping, which fused kernels cannot express)"
    if spec.mixed_windows:
        return "xla (per-layer sliding windows)"
    return options.attention


def _exact_attention(q, k, v, mask, scale: float, cap: float | None):
    """Attention written out (scores, soft-cap, mask, fp32 softmax, values) as transformers'
    eager attention computes it: the path for what jax.nn.dot_product_attention cannot express
    (soft-capped scores). q [B, T, H, D], k/v [B, S, KV, D], mask broadcastable to [B, H, T, S]."""
    B, T, H, D = q.shape
    kv = k.shape[2]
    qg = q.reshape(B, T, kv, H // kv, D)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    scores = softcap(scores, cap)
    mask = jnp.broadcast_to(mask, (mask.shape[0], H, T, mask.shape[-1])).reshape(mask.shape[0], kv, H // kv, T, -1)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(B, T, H, D)


def _project(options: Options, x: jax.Array, linears: tuple[LoRALinear, ...], keys: list) -> list[jax.Array]:
    """The linears that read the same ``x`` (q, k, v; gate, up), with their dropout keys: one
    fused product, or one call per linear. o_proj and down_proj stay single: concatenating their
    input with x @ A would copy a whole activation (8192 wide for down_proj) to save a narrower
    output's add."""
    if options.fuse:
        return fused_projections(x, linears, keys)
    return [linear(x, key) for linear, key in zip(linears, keys)]


def _optional_param(value: jax.Array | None) -> nnx.Param | None:
    return None if value is None else nnx.Param(value)


class Attention(nnx.Module):
    """Grouped-query attention with rope; q/k/v biases live in the linears, ``q_norm``/``k_norm``
    (RMSNorm over head_dim of every head, before rope) are present when the spec has qk_norm."""

    def __init__(self, spec: ModelSpec, options: Options, linears: dict[str, LoRALinear], norms: dict[str, Any]):
        if spec.fused:  # Phi-3: one qkv_proj, split after the product (never reordered)
            self.qkv_proj = linears["qkv_proj"]
        else:
            self.q_proj, self.k_proj, self.v_proj = linears["q_proj"], linears["k_proj"], linears["v_proj"]
        self.o_proj = linears["o_proj"]
        self.q_norm = _optional_param(norms.get("self_attn.q_norm.weight"))
        self.k_norm = _optional_param(norms.get("self_attn.k_norm.weight"))
        self.spec, self.options = spec, options

    def __call__(self, x, cos, sin, key_mask, keys, cache: Cache | None, start, window, segments=None):
        s = self.spec
        B, T, _ = x.shape
        if s.fused:
            q_end, kv_width = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
            q, k, v = jnp.split(self.qkv_proj(x, keys("qkv_proj")), [q_end, q_end + kv_width], axis=-1)
        else:
            q, k, v = _project(
                self.options,
                x,
                (self.q_proj, self.k_proj, self.v_proj),
                [keys(n) for n in ("q_proj", "k_proj", "v_proj")],
            )
        q = q.reshape(B, T, s.num_heads, s.head_dim)
        k = k.reshape(B, T, s.num_kv_heads, s.head_dim)
        v = v.reshape(B, T, s.num_kv_heads, s.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q = rms_norm(q, self.q_norm[...], s.rms_norm_eps, s.norm_offset)
            k = rms_norm(k, self.k_norm[...], s.rms_norm_eps, s.norm_offset)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (checkpoint_name(t, "qkv") for t in (q, k, v))
        if cache is None and segments is not None:
            out, new_cache = self._attend_segments(q, k, v, segments, window), None
        elif cache is None:
            out, new_cache = self._attend(q, k, v, key_mask, window), None
        else:
            out, new_cache = self._attend_cached(q, k, v, cache, start, window, key_mask)
        out = checkpoint_name(out.reshape(B, T, s.num_heads * s.head_dim), "attn_out")
        return self.o_proj(out, keys("o_proj")), new_cache

    def _attend(self, q, k, v, key_mask, window):
        T = q.shape[1]
        scale = self.spec.attention_scale
        if window is not None or self.spec.attn_softcap is not None:  # an explicit mask
            window = self.spec.sliding_window if window is None else window  # traced per layer, or shared
            pos = jnp.arange(T)
            mask = pos[None, :] <= pos[:, None]
            if window is not None:
                mask &= pos[None, :] > pos[:, None] - window
            mask = mask[None, None] if key_mask is None else mask[None, None] & key_mask[:, None, None, :].astype(bool)
            if self.spec.attn_softcap is not None:
                return _exact_attention(q, k, v, mask, scale or q.shape[-1] ** -0.5, self.spec.attn_softcap)
            return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale)
        shared = self.spec.sliding_window
        # Only passed when it matters (windows shorter than the sequence), which also keeps jax
        # versions without ``local_window_size`` working for full attention.
        extra = {"local_window_size": (shared - 1, 0)} if shared is not None and T > shared else {}
        if self.options.attention == "cudnn" and T % 2 == 0:  # cuDNN's training kernels refuse odd lengths
            return jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=scale, implementation="cudnn", **extra)
        mask = None if key_mask is None else key_mask[:, None, None, :].astype(bool)
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, scale=scale, **extra)

    def _attend_segments(self, q, k, v, segments, window):
        """Packed rows: a token attends to earlier tokens of its own segment only (segment ids
        [B, T], padding its own segment 0), so every packed example computes what it would
        alone. The same-segment mask [B, 1, T, T] is shared by the heads; causality and a shared
        sliding window stay the kernel's own (on cuDNN the mask becomes an additive bias). Inside
        a segment positions are contiguous, so a window over indices is a window over positions."""
        T = q.shape[1]
        pos = jnp.arange(T)
        mask = segments[:, :, None] == segments[:, None, :]
        if window is not None:  # this layer's own window (traced)
            mask &= pos[None, None, :] > pos[None, :, None] - window
        shared, scale, cap = self.spec.sliding_window, self.spec.attention_scale, self.spec.attn_softcap
        if cap is not None:  # soft-capped scores (Gemma 2): the written-out path, every rule in the mask
            mask &= pos[None, None, :] <= pos[None, :, None]
            if window is None and shared is not None:
                mask &= pos[None, None, :] > pos[None, :, None] - shared
            return _exact_attention(q, k, v, mask[:, None], scale or q.shape[-1] ** -0.5, cap)
        extra = {"local_window_size": (shared - 1, 0)} if shared is not None and T > shared else {}
        if self.options.packed_attention == "cudnn" and window is None and T % 2 == 0:
            extra["implementation"] = "cudnn"
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], is_causal=True, scale=scale, **extra)

    def _attend_cached(self, q, k, v, cache: Cache, start, window, key_mask=None):
        """Write this chunk's keys/values at ``start`` and attend over the whole cache, masking
        the slots after each query's own position (they hold stale or padding entries) and,
        with ``key_mask`` [B, S] (batched generation), each row's left padding."""
        ck, cv = cache
        ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, start, 0, 0))
        cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, start, 0, 0))
        q_pos = start + jnp.arange(q.shape[1])
        k_pos = jnp.arange(ck.shape[1])
        mask = k_pos[None, :] <= q_pos[:, None]
        window = self.spec.sliding_window if window is None else window
        if window is not None:
            mask &= k_pos[None, :] > q_pos[:, None] - window
        mask = mask[None, None] if key_mask is None else mask[None, None] & key_mask[:, None, None, :]
        scale, cap = self.spec.attention_scale, self.spec.attn_softcap
        if cap is not None:
            return _exact_attention(q, ck, cv, mask, scale or q.shape[-1] ** -0.5, cap), (ck, cv)
        out = jax.nn.dot_product_attention(q, ck, cv, mask=mask, scale=scale)
        return out, (ck, cv)


class MLP(nnx.Module):
    """The gated MLP: down(act(gate(x)) * up(x)), act silu or (Gemma) GELU's tanh approximation;
    Phi-3's gate and up are the two halves of one gate_up_proj."""

    def __init__(self, options: Options, linears: dict[str, LoRALinear], spec: ModelSpec):
        if spec.fused:
            self.gate_up_proj = linears["gate_up_proj"]
        else:
            self.gate_proj, self.up_proj = linears["gate_proj"], linears["up_proj"]
        self.down_proj = linears["down_proj"]
        self.options = options
        self.fused, self.gelu = spec.fused, spec.hidden_act == "gelu_pytorch_tanh"

    def __call__(self, x, keys):
        if self.fused:
            gate, up = jnp.split(self.gate_up_proj(x, keys("gate_up_proj")), 2, axis=-1)
        else:
            gate, up = _project(self.options, x, (self.gate_proj, self.up_proj), [keys("gate_proj"), keys("up_proj")])
        act = jax.nn.gelu(gate, approximate=True) if self.gelu else jax.nn.silu(gate)
        hidden = checkpoint_name(act * up, "mlp_hidden")
        return self.down_proj(hidden, keys("down_proj"))


class Block(nnx.Module):
    """All decoder layers at once: every array has a leading [layers] axis until scanned.
    ``norms`` maps the layer's HF norm names (``input_layernorm.weight``...) to stacked scales."""

    def __init__(self, spec: ModelSpec, options: Options, norms: dict[str, Any], linears: dict[str, LoRALinear]):
        self.input_layernorm = nnx.Param(norms["input_layernorm.weight"])
        self.post_attention_layernorm = nnx.Param(norms["post_attention_layernorm.weight"])
        self.pre_feedforward_layernorm = _optional_param(norms.get("pre_feedforward_layernorm.weight"))
        self.post_feedforward_layernorm = _optional_param(norms.get("post_feedforward_layernorm.weight"))
        self.self_attn = Attention(spec, options, linears, norms)
        self.mlp = MLP(options, linears, spec)
        self.eps, self.offset = spec.rms_norm_eps, spec.norm_offset
        self.linear_names = spec.linear_names

    def _norm(self, x, weight: nnx.Param):
        return rms_norm(x, weight[...], self.eps, self.offset)

    def __call__(self, x, cos, sin, key_mask, key, cache, start, window=None, segments=None):
        keys = _module_keys(key)
        attn, new_cache = self.self_attn(
            self._norm(x, self.input_layernorm), cos, sin, key_mask, keys, cache, start, window, segments
        )
        if self.pre_feedforward_layernorm is None or self.post_feedforward_layernorm is None:
            x = x + attn
            return x + self.mlp(self._norm(x, self.post_attention_layernorm), keys), new_cache
        # Gemma: post_attention_layernorm normalises the attention *output*; the MLP has its own pair.
        x = x + self._norm(attn, self.post_attention_layernorm)
        mlp = self.mlp(self._norm(x, self.pre_feedforward_layernorm), keys)
        return x + self._norm(mlp, self.post_feedforward_layernorm), new_cache


def _module_keys(key: jax.Array | None):
    """name -> that linear's dropout key, by its fixed number (core/adapters/modules.py: q_proj 0
    ... down_proj 6, as peft draws one mask per module): a row of this layer's portable key table
    (uint32 [modules, 2]) or a PRNG key folded; None without dropout."""
    if key is None:
        return lambda name: None
    if key.dtype == jnp.uint32:
        return lambda name: key[MODULE_NUMBERS[name]]
    return lambda name: jax.random.fold_in(key, MODULE_NUMBERS[name])


def empty_cache(spec: ModelSpec, dtype, batch: int, length: int) -> Cache:
    shape = (spec.num_layers, batch, length, spec.num_kv_heads, spec.head_dim)
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn, prevent_cse=False)
    if policy == "dots":
        return jax.checkpoint(fn, prevent_cse=False, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    if policy == "dots+fused":  # the fused products' outputs too (their dots sit inside a custom VJP)
        both = jax.checkpoint_policies.save_from_both_policies(
            jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
            jax.checkpoint_policies.save_only_these_names(FUSED_NAME),
        )
        return jax.checkpoint(fn, prevent_cse=False, policy=both)
    names = policy.removeprefix("names:").split(",")
    return jax.checkpoint(fn, prevent_cse=False, policy=jax.checkpoint_policies.save_only_these_names(*names))


class DecoderLM(nnx.Module):
    """Embeddings, the scanned block, final norm and (tied or untied) lm_head.

    ``weights`` holds base arrays in the compute dtype under their HF names: the whole-model
    ``model.embed_tokens.weight`` [V, d], ``model.norm.weight`` [d], ``lm_head.weight`` [V, d]
    (absent when tied), and per layer, under the name inside ``model.layers.N.``, arrays
    stacked over layers: linear kernels [L, in, out] (transposed from HF), biases [L, out],
    norm scales [L, d] or [L, head_dim]. ``lora`` maps targeted linear names to
    (A [L, in, r], B [L, r, out]).
    """

    def __init__(
        self,
        spec: ModelSpec,
        options: Options,
        weights: dict[str, jax.Array],
        lora: dict[str, tuple[jax.Array, jax.Array]],
        *,
        scaling: float,
        dropout_rate: float,
    ):
        self.spec, self.options = spec, options
        self.embed_tokens = nnx.Param(weights["model.embed_tokens.weight"])
        self.norm = nnx.Param(weights["model.norm.weight"])
        self.lm_head = None if spec.tie_word_embeddings else nnx.Param(weights["lm_head.weight"])
        linears = {}
        for name in spec.linear_names:
            a, b = lora.get(name, (None, None))
            prefix = f"{spec.parent(name)}.{name}"
            linears[name] = LoRALinear(
                weights[f"{prefix}.weight"],
                a,
                b,
                bias=weights.get(f"{prefix}.bias"),
                scaling=scaling,
                dropout_rate=dropout_rate,
            )
        norms = {name: weights[name] for name in spec.layer_tensors() if name.endswith("norm.weight")}
        self.layers = Block(spec, options, norms, linears)

    @property
    def dtype(self):
        return jnp.dtype(self.options.dtype)

    def _layer_windows(self) -> jax.Array | None:
        """One window per layer when they differ (scanned with the layers), else None."""
        if not self.spec.mixed_windows:
            return None
        return jnp.asarray(np.array([w or FULL_WINDOW for w in self.spec.layer_windows], np.int32))

    def hidden_states(
        self,
        input_ids: jax.Array,
        key_mask: jax.Array | None = None,
        *,
        dropout_key: jax.Array | None = None,
        cache: Cache | None = None,
        start: Any = 0,
        segment_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        left_pad: jax.Array | None = None,
    ) -> tuple[jax.Array, Cache | None]:
        """Final-norm hidden states [B, T, d]; with ``cache``, positions start at ``start``.
        Packed rows pass ``segment_ids`` and ``position_ids`` [B, T] (core.types.Batch): attention
        stays inside each segment and rope uses the per-example positions. ``left_pad`` [B]
        (batched generation, with ``cache``): each row's first cache slots are padding, hidden
        from attention, and its positions count from its first real token."""
        T = input_ids.shape[1]
        x = self.embed_tokens[...][input_ids]
        if self.spec.embed_scale:  # Gemma: sqrt(hidden) rounded to the compute dtype, as transformers
            x = x * jnp.asarray(self.spec.hidden_size**0.5, x.dtype)
        positions = (start + jnp.arange(T))[None] if position_ids is None else position_ids  # [1 or B, T]
        if left_pad is not None and cache is not None:
            positions = jnp.maximum(positions - left_pad[:, None], 0)
            key_mask = jnp.arange(cache[0].shape[2])[None, :] >= left_pad[:, None]
        cos, sin = cos_sin(positions, inv_frequencies(self.spec.rope, self.spec.head_dim), self.dtype)
        local = self._local_rope(positions)
        graphdef, stacked = nnx.split(self.layers)
        # dropout_key: the portable key table [layers, modules, 2] (scanned as it is) or a PRNG key
        layer_keys = dropout_key
        if dropout_key is not None and dropout_key.dtype != jnp.uint32:
            layer_keys = jax.random.split(dropout_key, self.spec.num_layers)

        def one_layer(x, per_layer):
            layer_state, key, layer_cache, window, is_local = per_layer
            block = nnx.merge(graphdef, layer_state)
            c, s = cos, sin
            if local is not None:  # Gemma 3: the sliding layers rotate with their own base
                c, s = jnp.where(is_local, local[0], cos), jnp.where(is_local, local[1], sin)
            return block(x, c, s, key_mask, key, layer_cache, start, window, segment_ids)

        flags = None if local is None else jnp.asarray(np.array([w is not None for w in self.spec.layer_windows]))
        scanned = (stacked, layer_keys, cache, self._layer_windows(), flags)
        x, new_cache = jax.lax.scan(_remat(one_layer, self.options.remat), x, scanned)
        return rms_norm(x, self.norm[...], self.spec.rms_norm_eps, self.spec.norm_offset), new_cache

    def _local_rope(self, positions: jax.Array) -> tuple[jax.Array, jax.Array] | None:
        """cos and sin of the sliding layers' own rope (Gemma 3), or None."""
        if self.spec.local_rope is None:
            return None
        return cos_sin(positions, inv_frequencies(self.spec.local_rope, self.spec.head_dim), self.dtype)

    def output_embedding(self) -> jax.Array:
        return (self.embed_tokens if self.lm_head is None else self.lm_head)[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        logits = jnp.einsum("btd,vd->btv", hidden, self.output_embedding(), preferred_element_type=jnp.float32)
        return softcap(logits, self.spec.final_softcap)

    def loss_sum(
        self, input_ids, attention_mask, labels, *, dropout_key=None, segment_ids=None, position_ids=None
    ) -> jax.Array:
        """Sum of fp32 token cross-entropy over targets (labels unshifted, HF convention)."""
        hidden, _ = self.hidden_states(
            input_ids, attention_mask, dropout_key=dropout_key, segment_ids=segment_ids, position_ids=position_ids
        )
        targets = jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE_INDEX)], axis=1)
        return chunked_cross_entropy_sum(
            hidden, self.output_embedding(), targets, self.options.loss_chunk, self.spec.final_softcap
        )


def _chunks(hidden: jax.Array, targets: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
    """[n, B, c, d] and [n, B, c]: the sequence cut into n pieces of c positions, every row in
    every piece, so a piece holds about ``chunk`` tokens; padded with ignored targets.

    Rows stay a batch axis of every piece: on several devices each then keeps its own rows.
    Cutting the flattened [B*T] tokens instead put whole chunks on one device, so XLA gathered
    the hidden states and every device computed the lm_head of the whole global batch
    (docs/bench/NOTES.md: the missing 16% of 2-GPU data-parallel scaling)."""
    B, T, d = hidden.shape
    c = max(1, min(T, chunk // B))
    pad = -T % c
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=IGNORE_INDEX)
    n = hidden.shape[1] // c
    return hidden.reshape(B, n, c, d).swapaxes(0, 1), targets.reshape(B, n, c).swapaxes(0, 1)


def _chunk_logits(h_c: jax.Array, embedding: jax.Array, cap: float | None = None) -> jax.Array:
    return softcap(jnp.einsum("bcd,vd->bcv", h_c, embedding, preferred_element_type=jnp.float32), cap)


def _chunk_loss(logits: jax.Array, t_c: jax.Array) -> tuple[jax.Array, jax.Array]:
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, jnp.maximum(t_c, 0)[..., None], axis=-1)[..., 0]
    valid = t_c != IGNORE_INDEX
    return jnp.sum(jnp.where(valid, lse - target_logit, 0.0)), lse


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def chunked_cross_entropy_sum(
    hidden: jax.Array, embedding: jax.Array, targets: jax.Array, chunk: int, cap: float | None = None
) -> jax.Array:
    """Sum over target tokens of the fp32 cross-entropy of ``hidden @ embedding.T``, computed
    ``chunk`` tokens at a time, so fp32 logits over a 128k vocabulary never exist for the whole
    micro-batch.

    The gradient is computed in the forward pass, chunk by chunk (dh = (softmax - onehot) @ W,
    in the compute dtype), and kept as the only residual: no logits are stored or recomputed,
    and the backward matmul runs in bf16 (autodiff of an fp32-accumulating matmul would run it
    in fp32). ``embedding`` is frozen: it gets no gradient. ``cap``: Gemma 2's final-logit
    soft-capping, applied to each chunk's logits (its derivative 1 - tanh^2 in the gradient).
    """
    h, t = _chunks(hidden, targets, chunk)

    def body(total, xs):
        return total + _chunk_loss(_chunk_logits(xs[0], embedding, cap), xs[1])[0], None

    return jax.lax.scan(body, jnp.zeros((), jnp.float32), (h, t))[0]


def _ce_forward(hidden, embedding, targets, chunk, cap=None):
    h, t = _chunks(hidden, targets, chunk)

    def body(total, xs):
        h_c, t_c = xs
        raw = _chunk_logits(h_c, embedding)
        logits = softcap(raw, cap)
        loss, lse = _chunk_loss(logits, t_c)
        vocab = jnp.arange(logits.shape[-1])
        dlogits = jnp.exp(logits - lse[..., None]) - (vocab == t_c[..., None])
        if cap is not None:  # d(cap * tanh(raw / cap)) / d raw
            dlogits = dlogits * (1 - jnp.square(logits / cap))
        dlogits = jnp.where((t_c != IGNORE_INDEX)[..., None], dlogits, 0.0).astype(h_c.dtype)
        dh = jnp.einsum("bcv,vd->bcd", dlogits, embedding, preferred_element_type=jnp.float32)
        return total + loss, dh.astype(h_c.dtype)

    total, dh = jax.lax.scan(body, jnp.zeros((), jnp.float32), (h, t))
    B, T, d = hidden.shape
    return total, dh.swapaxes(0, 1).reshape(B, -1, d)[:, :T]


def _ce_backward(chunk, cap, dh, cotangent):
    return (cotangent * dh).astype(dh.dtype), None, None


chunked_cross_entropy_sum.defvjp(_ce_forward, _ce_backward)

"""The jitted pure functions of the jax backend: the training micro-step, eval, logits, decoding.

They take the LoRA and frozen states as arguments and close over nothing but ``Statics``
(the graph definition and the LoRA/optimizer settings). The micro-step donates the LoRA and
optimizer buffers, syncs nothing with the host (the loss comes back as a device scalar the
engine converts once per window) and takes its dropout keys from (seed, step, micro): the
core's portable key table, or a jax PRNG key folded from them, so a resumed run replays
identical randomness. Batch shapes vary with the padding bucket; jit keeps
one executable per shape.

On several devices the same functions run as one SPMD program (sharding.py): the arguments
arrive placed (batch rows split over the devices, base weights over fsdp), the rows are pinned
to that split, and the outputs the backend keeps (LoRA, optimizer state, losses) are pinned
replicated, so XLA sums the gradient and the loss over devices and donation reuses the buffers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from loraswitch.backends.jax_flax import optimizer
from loraswitch.backends.jax_flax.sharding import Layout


def sample_token(logits: jax.Array, key: jax.Array, temperature, top_p) -> jax.Array:
    """Greedy when temperature is 0, else nucleus sampling at ``temperature`` and ``top_p``."""
    greedy = jnp.argmax(logits)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    order = jnp.argsort(-scaled)
    ranked = scaled[order]
    probs = jax.nn.softmax(ranked)
    keep = (jnp.cumsum(probs) - probs) < top_p  # the most likely token is always kept
    choice = jax.random.categorical(key, jnp.where(keep, ranked, -jnp.inf))
    return jnp.where(temperature > 0, order[choice], greedy)


@dataclass(frozen=True)
class Statics:
    """Everything the jitted functions close over. Equal statics share one set of jitted
    functions, so a second backend with the same model and LoRA settings compiles nothing again."""

    graphdef: Any
    seed: int
    prng: str
    dropout_rate: float
    dropout_masks: str  # portable: keys from the core's table; framework: jax.random
    weight_decay: float
    max_grad_norm: float | None
    layout: Layout


@dataclass(frozen=True)
class Functions:
    inner_tx: optax.GradientTransformation
    micro_step: Callable
    eval_loss: Callable
    logits: Callable
    extend: Callable
    extend_rows: Callable


def _packing_kwargs(packing) -> dict[str, Any]:
    """A packed batch's (segment_ids, position_ids) as loss_sum's keywords; None: one example a
    row. None is an empty pytree to jit, so packed and unpacked batches are two executables."""
    return {} if packing is None else {"segment_ids": packing[0], "position_ids": packing[1]}


@functools.cache
def compiled_functions(statics: Statics) -> Functions:
    graphdef, seed, prng, rate = statics.graphdef, statics.seed, statics.prng, statics.dropout_rate
    inner_tx = optimizer.inner_optimizer(statics.weight_decay, statics.max_grad_norm)
    replicated, rows = statics.layout.replicated, statics.layout.rows

    def split_rows(*arrays):
        return tuple(jax.lax.with_sharding_constraint(a, rows) for a in arrays)

    def micro_step(
        lora, opt_state, frozen, input_ids, attention_mask, labels, packing, weight, lr, window, step, micro, key_table
    ):
        input_ids, attention_mask, labels = split_rows(input_ids, attention_mask, labels)
        packing = packing if packing is None else split_rows(*packing)  # (segment_ids, position_ids) or None
        key = None
        if rate > 0 and statics.dropout_masks == "portable":
            key = key_table  # uint32 [layers, modules, 2], computed on the host by the core
        elif rate > 0:
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed, impl=prng), step), micro)

        def weighted_loss(lora):
            model = nnx.merge(graphdef, lora, frozen)
            return (
                model.loss_sum(input_ids, attention_mask, labels, dropout_key=key, **_packing_kwargs(packing)) * weight
            )

        loss, grads = jax.value_and_grad(weighted_loss)(lora)
        tx = optimizer.accumulate(inner_tx, window)
        updates, opt_state = tx.update(grads, optimizer.set_learning_rate(opt_state, lr), lora)
        return optax.apply_updates(lora, updates), opt_state, loss

    def eval_loss(lora, frozen, input_ids, attention_mask, labels, packing):
        input_ids, attention_mask, labels = split_rows(input_ids, attention_mask, labels)
        packing = packing if packing is None else split_rows(*packing)
        return nnx.merge(graphdef, lora, frozen).loss_sum(input_ids, attention_mask, labels, **_packing_kwargs(packing))

    def logits(lora, frozen, input_ids, attention_mask):
        input_ids, attention_mask = split_rows(input_ids, attention_mask)
        model = nnx.merge(graphdef, lora, frozen)
        hidden, _ = model.hidden_states(input_ids, attention_mask)
        return model.logits(hidden)

    def extend(lora, frozen, cache, ids, start, last, key, temperature, top_p):
        """Run ``ids`` through the KV cache from position ``start``; sample after index ``last``."""
        model = nnx.merge(graphdef, lora, frozen)
        hidden, cache = model.hidden_states(ids, cache=cache, start=start)
        logits = model.logits(jax.lax.dynamic_slice_in_dim(hidden, last, 1, axis=1))[0, 0]
        return sample_token(logits, key, temperature, top_p), cache

    def extend_rows(lora, frozen, cache, ids, start, left_pad, key, temperature, top_p):
        """``extend`` for a left-padded batch: every row's newest token is the chunk's last, so
        one token is sampled per row, each with the same key (as each row alone would)."""
        model = nnx.merge(graphdef, lora, frozen)
        hidden, cache = model.hidden_states(ids, cache=cache, start=start, left_pad=left_pad)
        logits = model.logits(hidden[:, -1:])[:, 0]
        return jax.vmap(sample_token, in_axes=(0, None, None, None))(logits, key, temperature, top_p), cache

    return Functions(
        inner_tx=inner_tx,
        micro_step=jax.jit(micro_step, donate_argnums=(0, 1), out_shardings=replicated),
        eval_loss=jax.jit(eval_loss, out_shardings=replicated),
        logits=jax.jit(logits, out_shardings=replicated),
        extend=jax.jit(extend, donate_argnums=(2,), out_shardings=replicated),
        extend_rows=jax.jit(extend_rows, donate_argnums=(2,), out_shardings=replicated),
    )

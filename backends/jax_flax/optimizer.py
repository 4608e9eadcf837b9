"""AdamW over the LoRA parameters, accumulated with optax.MultiSteps over the core's windows.

- AdamW: optax.adamw matches torch.optim.AdamW (betas 0.9/0.999, eps 1e-8 outside the square
  root, decoupled weight decay lr * wd * param); wrapped in inject_hyperparams so the core's
  learning rate is a state value set every micro-step, not a recompile.
- MultiSteps sums (``use_grad_mean=False``) rather than averages: the core's loss weights already
  normalise over the whole window, so the summed gradient is what torch's ``.backward()``
  accumulates. Its ``every_k_schedule`` returns the window size the core passes with each
  micro-step (a traced argument), so the short last window of an epoch is followed exactly.
- Checkpoints hold the core's portable AdamW state (core/adapters/optimizer_state.py: moments
  per PEFT tensor name, the update count), so a run continues on another backend;
  ``to_portable`` / ``from_portable`` convert at the window boundary, where MultiSteps'
  accumulator is empty.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from loraswitch.backends.jax_flax import lora_layout
from loraswitch.backends.jax_flax.trees import named_leaves, replace_leaves
from loraswitch.core.adapters.optimizer_state import BETAS, EPS, AdamWState
from loraswitch.core.models.families import ModelSpec


def inner_optimizer(weight_decay: float, max_grad_norm: float | None) -> optax.GradientTransformation:
    adamw = optax.inject_hyperparams(optax.adamw)(
        learning_rate=0.0, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=weight_decay
    )
    if max_grad_norm:
        return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw)
    return adamw


def accumulate(inner: optax.GradientTransformation, window_size) -> optax.MultiSteps:
    """``window_size`` may be a traced scalar: the schedule is rebuilt inside each jitted step."""
    return optax.MultiSteps(inner, every_k_schedule=lambda gradient_step: window_size, use_grad_mean=False)


def _with_lr(inject_state, lr):
    hyper = inject_state.hyperparams
    return inject_state._replace(
        hyperparams={**hyper, "learning_rate": jnp.asarray(lr, jnp.asarray(hyper["learning_rate"]).dtype)}
    )


def set_learning_rate(state: optax.MultiStepsState, lr) -> optax.MultiStepsState:
    inner = state.inner_opt_state
    if hasattr(inner, "hyperparams"):
        inner = _with_lr(inner, lr)
    else:  # chain(clip_by_global_norm, adamw): adamw's state is the last
        inner = (*inner[:-1], _with_lr(inner[-1], lr))
    return state._replace(inner_opt_state=inner)


def to_portable(state: Any, spec: ModelSpec, targets: list[str]) -> AdamWState:
    """The core's portable AdamW state of a MultiSteps state at a window boundary (host arrays)."""
    named = {name: np.asarray(jax.device_get(v)) for name, v in named_leaves(state).items()}
    if int(named["mini_step"]) != 0:
        raise RuntimeError("the optimizer state is mid-window; the engine checkpoints between windows only")
    mu = {name.split("/mu/", 1)[1]: v for name, v in named.items() if "/mu/" in name}
    nu = {name.split("/nu/", 1)[1]: v for name, v in named.items() if "/nu/" in name}
    return AdamWState(
        int(named["gradient_step"]), lora_layout.to_peft(mu, spec, targets), lora_layout.to_peft(nu, spec, targets)
    )


def from_portable(template: Any, portable: AdamWState, spec: ModelSpec, targets: list[str], r: int) -> Any:
    """A MultiSteps state like ``template`` (a fresh init) holding ``portable``'s moments and
    count: every count (MultiSteps' gradient_step, inject_hyperparams' and adam's count) is the
    number of updates, the window is empty (mini_step 0, zero accumulator), and the
    hyperparameters are the template's (the learning rate is set again every micro-step)."""
    mu = lora_layout.from_peft(portable.exp_avg, spec, targets, r)
    nu = lora_layout.from_peft(portable.exp_avg_sq, spec, targets, r)
    values = {}
    for name, leaf in named_leaves(template).items():
        dtype = jnp.asarray(leaf).dtype
        if name == "gradient_step" or name.endswith("/count"):
            values[name] = jnp.asarray(portable.step, dtype)
        elif "/mu/" in name:
            values[name] = jnp.asarray(mu[name.split("/mu/", 1)[1]], dtype)
        elif "/nu/" in name:
            values[name] = jnp.asarray(nu[name.split("/nu/", 1)[1]], dtype)
        elif name == "mini_step" or name.startswith("acc_grads/"):
            values[name] = jnp.zeros_like(leaf)
        else:
            values[name] = leaf
    return replace_leaves(template, values)

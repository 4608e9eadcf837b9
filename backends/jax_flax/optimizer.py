"""AdamW over the LoRA parameters, accumulated with optax.MultiSteps over the core's windows.

- AdamW: optax.adamw matches torch.optim.AdamW (betas 0.9/0.999, eps 1e-8 outside the square
  root, decoupled weight decay lr * wd * param); wrapped in inject_hyperparams so the core's
  learning rate is a state value set every micro-step, not a recompile.
- MultiSteps sums (``use_grad_mean=False``) rather than averages: the core's loss weights already
  normalise over the whole window, so the summed gradient is what torch's ``.backward()``
  accumulates. Its ``every_k_schedule`` returns the window size the core passes with each
  micro-step (a traced argument), so the short last window of an epoch is followed exactly.
- State checkpoints are safetensors (leaves under '/'-joined names) + JSON, checked name by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from loraswitch.backends.jax_flax.trees import named_leaves, replace_leaves
from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import read_json_object

STATE_FILE = "jax_optimizer.safetensors"
META_FILE = "jax_optimizer.json"
FORMAT = "loraswitch-jax-optimizer/1"


def inner_optimizer(weight_decay: float, max_grad_norm: float | None) -> optax.GradientTransformation:
    adamw = optax.inject_hyperparams(optax.adamw)(
        learning_rate=0.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay
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


def save_state(directory: Path, state: Any, meta: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    arrays = {name: np.asarray(jax.device_get(v)) for name, v in named_leaves(state).items()}
    save_file(arrays, str(directory / STATE_FILE))
    described = {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()}
    (directory / META_FILE).write_text(json.dumps({"format": FORMAT, **meta, "tensors": described}, indent=2) + "\n")


def read_meta(directory: Path) -> dict[str, Any]:
    file = directory / META_FILE
    if not file.is_file():
        others = sorted(p.name for p in directory.glob("*optim*")) if directory.is_dir() else []
        hint = (
            f" (found {', '.join(others)}: was it written by another backend? resume with that one)" if others else ""
        )
        raise UserError(f"{file}: missing; the jax backend's optimizer state is not in this checkpoint{hint}")
    meta = read_json_object(file)
    if meta.get("format") != FORMAT:
        raise UserError(f"{file}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_state(directory: Path, template: Any) -> Any:
    """The state saved in ``directory``, with the tree structure of ``template`` (a fresh init)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    read_meta(directory)
    file = directory / STATE_FILE
    if not file.is_file():
        raise UserError(f"{file}: missing; the checkpoint is incomplete")
    try:
        arrays = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{file}: cannot read ({e})") from e
    expected = named_leaves(template)
    for name in expected:
        if name not in arrays:
            raise UserError(
                f"{file}: key {name!r} is missing; the checkpoint was written for another LoRA "
                f"configuration (lora_r, lora_target_modules, max_grad_norm)"
            )
        want = jnp.asarray(expected[name])
        got = arrays[name]
        if tuple(got.shape) != tuple(want.shape) or np.dtype(got.dtype) != np.dtype(want.dtype):
            raise UserError(
                f"{file}: key {name!r} has shape {list(got.shape)} {got.dtype}, the model needs "
                f"{list(want.shape)} {want.dtype}; the checkpoint was written for another configuration"
            )
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise UserError(f"{file}: unexpected key {extra[0]!r}; the checkpoint was written for another configuration")
    return replace_leaves(template, {name: jnp.asarray(a) for name, a in arrays.items()})

"""AdamW state and RNG state in safe formats (safetensors + JSON, never pickle).

Moments are stored under the adapter's PEFT tensor names (``<name>.exp_avg``,
``<name>.exp_avg_sq``), so a checkpoint says which model it belongs to, and a mismatch (another
model, other target modules, another rank) is named by its first differing key.
Dropout needs no saved RNG: every micro-step reseeds from (seed, step, micro). The torch RNG
states are still saved so anything else drawing random numbers resumes where it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import read_json_object

STATE_FORMAT = "loraswitch-adamw/1"
OPTIMIZER_WEIGHTS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
RNG_WEIGHTS = "rng_torch.safetensors"


def save_optimizer_state(
    optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter], directory: Path, extra: dict
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    step = 0
    for name, param in params.items():
        state = optimizer.state.get(param)
        if not state:
            continue
        tensors[f"{name}.exp_avg"] = state["exp_avg"].detach().float().cpu().contiguous()
        tensors[f"{name}.exp_avg_sq"] = state["exp_avg_sq"].detach().float().cpu().contiguous()
        step = int(state["step"])
    group = optimizer.param_groups[0]
    record = {
        "format": STATE_FORMAT,
        "step": step,
        "params": {name: list(p.shape) for name, p in params.items()},
        "betas": list(group["betas"]),
        "eps": group["eps"],
        "weight_decay": group["weight_decay"],
        **extra,
    }
    save_file(tensors, str(directory / OPTIMIZER_WEIGHTS), metadata={"format": STATE_FORMAT})
    (directory / OPTIMIZER_JSON).write_text(json.dumps(record, indent=2) + "\n")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda.{i}"] = state
    save_file(rng, str(directory / RNG_WEIGHTS))


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter], directory: Path
) -> None:
    json_path, weights_path = directory / OPTIMIZER_JSON, directory / OPTIMIZER_WEIGHTS
    for path in (json_path, weights_path):
        if not path.is_file():
            raise UserError(f"{path}: missing; the checkpoint is incomplete")
    record = read_json_object(json_path)
    if record.get("format") != STATE_FORMAT:
        raise UserError(f"{json_path}: format {record.get('format')!r} is not {STATE_FORMAT!r}")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{weights_path}: not a readable safetensors file ({e})") from None

    saved_shapes = record.get("params", {})
    for name, param in params.items():
        if name not in saved_shapes:
            raise UserError(
                f"{json_path}: no state for {name!r}; the checkpoint belongs to another model "
                "or other lora_target_modules"
            )
        if list(saved_shapes[name]) != list(param.shape):
            raise UserError(
                f"{json_path}: {name!r} has shape {saved_shapes[name]} in the checkpoint, "
                f"this model has {list(param.shape)} (a different lora_r or model?)"
            )
    for name in saved_shapes:
        if name not in params:
            raise UserError(
                f"{json_path}: state for {name!r}, which this model does not have; "
                "the checkpoint belongs to another model or other lora_target_modules"
            )

    step = int(record.get("step", 0))
    if step > 0:
        state = {}
        for index, (name, param) in enumerate(params.items()):
            moments = {}
            for moment in ("exp_avg", "exp_avg_sq"):
                key = f"{name}.{moment}"
                if key not in tensors or tuple(tensors[key].shape) != tuple(param.shape):
                    raise UserError(f"{weights_path}: tensor {key!r} is missing or has the wrong shape")
                moments[moment] = tensors[key]
            # AdamW keeps step as a float32 tensor; load_state_dict moves it where fused AdamW wants it.
            state[index] = {"step": torch.tensor(float(step), dtype=torch.float32), **moments}
        saved = optimizer.state_dict()
        optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})

    rng_path = directory / RNG_WEIGHTS
    if rng_path.is_file():
        rng = load_file(str(rng_path))
        torch.set_rng_state(rng["cpu"])
        cuda_states = [rng[f"cuda.{i}"] for i in range(len(rng) - 1) if f"cuda.{i}" in rng]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)

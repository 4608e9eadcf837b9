"""torch.optim.AdamW's state to and from the core's portable AdamW format (core/adapters/optimizer_state.py).

AdamW keeps, per parameter, ``exp_avg``, ``exp_avg_sq`` and ``step``; they map one to one onto the
portable moments under the parameter's PEFT name and the update count. Dropout needs no saved
RNG (its masks are a function of seed, step and micro-batch); the torch RNG states are still
saved (safetensors) so anything else drawing torch random numbers resumes where it was. A
checkpoint written by another backend has no such file, and none is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from loraswitch.backends.torch_peft.adapter import shapes, to_arrays
from loraswitch.core.adapters.optimizer_state import AdamWState, read_state, write_state
from loraswitch.core.files.safetensors_file import read_tensors, write_tensors

RNG_FILE = "rng_torch.safetensors"


def save_optimizer_state(
    optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter], directory: Path, extra: dict
) -> None:
    step, exp_avg, exp_avg_sq = 0, {}, {}
    for name, param in params.items():
        state = optimizer.state.get(param) or {}
        if state:
            step = int(state["step"])
        exp_avg[name] = state.get("exp_avg", torch.zeros_like(param))
        exp_avg_sq[name] = state.get("exp_avg_sq", torch.zeros_like(param))
    portable = AdamWState(step, to_arrays(exp_avg), to_arrays(exp_avg_sq))
    write_state(directory, portable, weight_decay=optimizer.param_groups[0]["weight_decay"], extra=extra)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda.{i}"] = state
    write_tensors(directory / RNG_FILE, {k: v.numpy() for k, v in rng.items()})


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter], directory: Path
) -> None:
    portable = read_state(directory, shapes(params))
    if portable.step > 0:
        state = {}
        for index, name in enumerate(params):
            state[index] = {
                # AdamW keeps step as a float32 tensor; load_state_dict moves it where fused AdamW wants it.
                "step": torch.tensor(float(portable.step), dtype=torch.float32),
                "exp_avg": torch.from_numpy(np.ascontiguousarray(portable.exp_avg[name])),
                "exp_avg_sq": torch.from_numpy(np.ascontiguousarray(portable.exp_avg_sq[name])),
            }
        optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    rng_path = directory / RNG_FILE
    if rng_path.is_file():
        rng = {k: torch.from_numpy(v) for k, v in read_tensors(rng_path).items()}
        torch.set_rng_state(rng["cpu"])
        cuda_states = [rng[f"cuda.{i}"] for i in range(len(rng) - 1) if f"cuda.{i}" in rng]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)

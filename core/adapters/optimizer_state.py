"""AdamW's state in one file format every backend writes and reads: checkpoints move between backends.

Every backend trains the LoRA weights with the same AdamW (betas, eps and the decoupled weight
decay below), so its whole state is the update count and two moments per LoRA tensor. A
checkpoint stores them under the adapter's PEFT tensor names, in PEFT's layout (A [r, in],
B [out, r]), fp32:

    optimizer.safetensors   "<tensor name>.exp_avg", "<tensor name>.exp_avg_sq"
    optimizer.json          {"format": "loraswitch-adamw/1", "step": N, "params": {name: shape},
                             "betas": [...], "eps": ..., "weight_decay": ..., "backend": ...}

A backend converts to its own layout on the way in and out (torch: per-parameter exp_avg,
exp_avg_sq and step; optax: mu, nu and the counts). Since the engine checkpoints only between
accumulation windows, no accumulated gradient is ever part of the state. The format is the one
the torch backend has written since its first release, so its old checkpoints still load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loraswitch.core.errors import UserError
from loraswitch.core.files.atomic import atomic_write_text
from loraswitch.core.files.json_file import read_json_object
from loraswitch.core.files.safetensors_file import read_tensors, write_tensors

FORMAT = "loraswitch-adamw/1"
JSON_FILE = "optimizer.json"
TENSORS_FILE = "optimizer.safetensors"
# The AdamW every backend uses (torch.optim.AdamW's defaults; eps outside the square root,
# weight decay decoupled: param -= lr * weight_decay * param, before the Adam step).
BETAS = (0.9, 0.999)
EPS = 1e-8
MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass
class AdamWState:
    """``step`` completed updates; first and second moments by PEFT tensor name (fp32)."""

    step: int
    exp_avg: dict[str, np.ndarray]
    exp_avg_sq: dict[str, np.ndarray]


def write_state(directory: Path, state: AdamWState, *, weight_decay: float, extra: dict[str, Any]) -> None:
    """Both files; ``extra`` (who wrote it: backend, framework) goes into the JSON as information."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in state.exp_avg:
        tensors[f"{name}.exp_avg"] = np.asarray(state.exp_avg[name], np.float32)
        tensors[f"{name}.exp_avg_sq"] = np.asarray(state.exp_avg_sq[name], np.float32)
    write_tensors(directory / TENSORS_FILE, tensors, metadata={"format": FORMAT})
    record = {
        "format": FORMAT,
        "step": int(state.step),
        "params": {name: list(np.shape(value)) for name, value in state.exp_avg.items()},
        "betas": list(BETAS),
        "eps": EPS,
        "weight_decay": weight_decay,
        **extra,
    }
    atomic_write_text(directory / JSON_FILE, json.dumps(record, indent=2) + "\n")


def read_state(directory: Path, expected: dict[str, tuple[int, ...]]) -> AdamWState:
    """The state in ``directory`` for LoRA tensors ``expected`` (name -> shape); any other name,
    shape or a missing file is a UserError naming the file (another model, lora_r or targets)."""
    directory = Path(directory)
    json_path, tensors_path = directory / JSON_FILE, directory / TENSORS_FILE
    if not json_path.is_file():
        others = sorted(p.name for p in directory.glob("*optim*")) if directory.is_dir() else []
        hint = f" (found {', '.join(others)}: written by an older loraswitch?)" if others else ""
        raise UserError(f"{json_path}: missing; the checkpoint holds no AdamW state{hint}")
    record = read_json_object(json_path)
    if record.get("format") != FORMAT:
        raise UserError(f"{json_path}: format {record.get('format')!r} is not {FORMAT!r}")
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise UserError(f"{json_path}: step = {step!r}: must be a non-negative integer")
    _check_names(json_path, record.get("params"), expected)
    if step == 0:  # no update yet: the moments are zero (a writer may have left them out)
        zeros = {name: np.zeros(shape, np.float32) for name, shape in expected.items()}
        return AdamWState(0, zeros, {k: v.copy() for k, v in zeros.items()})
    tensors = read_tensors(tensors_path, if_missing="the checkpoint is incomplete")
    moments: dict[str, dict[str, np.ndarray]] = {m: {} for m in MOMENTS}
    for name, shape in expected.items():
        for moment in MOMENTS:
            key = f"{name}.{moment}"
            if key not in tensors or tuple(tensors[key].shape) != tuple(shape):
                raise UserError(f"{tensors_path}: tensor {key!r} is missing or has the wrong shape")
            moments[moment][name] = tensors[key].astype(np.float32, copy=False)
    return AdamWState(step, moments["exp_avg"], moments["exp_avg_sq"])


def _check_names(json_path: Path, saved: Any, expected: dict[str, tuple[int, ...]]) -> None:
    if not isinstance(saved, dict):
        raise UserError(f"{json_path}: 'params' must be an object of tensor name -> shape")
    for name, shape in expected.items():
        if name not in saved:
            raise UserError(
                f"{json_path}: no state for {name!r}; the checkpoint belongs to another model "
                "or other lora_target_modules"
            )
        if list(saved[name]) != list(shape):
            raise UserError(
                f"{json_path}: {name!r} has shape {saved[name]} in the checkpoint, "
                f"this model has {list(shape)} (a different lora_r or model?)"
            )
    for name in saved:
        if name not in expected:
            raise UserError(
                f"{json_path}: state for {name!r}, which this model does not have; "
                "the checkpoint belongs to another model or other lora_target_modules"
            )

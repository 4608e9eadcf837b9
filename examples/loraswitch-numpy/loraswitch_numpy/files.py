"""Adapter and optimizer files: safetensors + JSON only, every problem a UserError naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import read_json_object

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODULE = "proj"  # the model's one adapted linear
KEY_A = f"base_model.model.{MODULE}.lora_A.weight"  # [r, in], PEFT's layout
KEY_B = f"base_model.model.{MODULE}.lora_B.weight"  # [out, r]
STATE_JSON = "numpy_backend_state.json"  # names chosen not to collide with the adapter's files
STATE_TENSORS = "numpy_backend_optimizer.safetensors"
STATE_FORMAT = "loraswitch-numpy-adamw/1"


def write_adapter(directory: Path, a: np.ndarray, b: np.ndarray, config: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tensors = {KEY_A: np.ascontiguousarray(a, np.float32), KEY_B: np.ascontiguousarray(b, np.float32)}
    save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def read_adapter(directory: Path, dim: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """LoRA A, B and adapter_config.json; shapes are checked against the model's width ``dim``."""
    config = read_json_object(directory / ADAPTER_CONFIG)
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)) or config[key] <= 0:
            raise UserError(f"{directory / ADAPTER_CONFIG}: {key!r} must be a positive number")
    tensors = read_tensors(directory / ADAPTER_WEIGHTS)
    r = int(config["r"])
    expect = {KEY_A: (r, dim), KEY_B: (dim, r)}
    check_tensors(directory / ADAPTER_WEIGHTS, tensors, expect)
    return tensors[KEY_A], tensors[KEY_B], config


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise UserError(f"{path}: not a readable safetensors file ({e})") from e


def check_tensors(path: Path, tensors: dict[str, np.ndarray], expect: dict[str, tuple[int, ...]]) -> None:
    """Exactly the expected names with the expected shapes, else one line saying which differs."""
    missing = sorted(set(expect) - set(tensors))
    extra = sorted(set(tensors) - set(expect))
    if missing or extra:
        raise UserError(
            f"{path}: tensor names differ from this model's: missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    for name, shape in expect.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise UserError(
                f"{path}: tensor {name!r} has shape {list(tensors[name].shape)}, this model needs {list(shape)}"
            )
        if not np.issubdtype(tensors[name].dtype, np.floating):
            raise UserError(f"{path}: tensor {name!r} has dtype {tensors[name].dtype}, expected a float type")

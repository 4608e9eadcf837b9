"""PEFT-format adapters: the same files peft's ``save_pretrained`` writes for the transformers class.

adapter_model.safetensors holds, per layer and targeted linear,
``base_model.model.model.layers.N.<parent>.<name>.lora_A.weight`` [r, in] (the parent submodule
from the family registry) and
``...lora_B.weight`` [out, r] in fp32; our stacked [L, in, r] / [L, r, out] arrays are transposed
and split per layer. adapter_config.json carries the keys peft has read since 0.13 (newer keys
such as ``peft_version`` are left out so older peft versions still load it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from loraswitch.backends.jax_flax.weights import SafetensorsFiles
from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import read_json_object
from loraswitch.core.models.families import ALL_LINEAR, ModelSpec, linear_parent

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def peft_key(layer: int, name: str, which: str) -> str:
    return f"base_model.model.model.layers.{layer}.{linear_parent(name)}.{name}.lora_{which}.weight"


def state_name(name: str, which: str) -> str:
    """Name of a LoRA array in the model's LoRA state (see trees.path_name)."""
    return f"layers/{linear_parent(name)}/{name}/lora_{which.lower()}"


def peft_config(
    *, r: int, alpha: float, dropout: float, targets: list[str], use_rslora: bool, base_model: str | None
) -> dict[str, Any]:
    return {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": dropout,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": {},
        "revision": None,
        "target_modules": sorted(targets),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": use_rslora,
    }


def save_adapter(directory: Path, lora: dict[str, np.ndarray], spec: ModelSpec, config: dict[str, Any]) -> None:
    """``lora`` maps state names to host arrays; ``config`` is ``peft_config(...)``."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in config["target_modules"]:
        a = np.asarray(lora[state_name(name, "A")], np.float32)
        b = np.asarray(lora[state_name(name, "B")], np.float32)
        for layer in range(spec.num_layers):
            tensors[peft_key(layer, name, "A")] = np.ascontiguousarray(a[layer].T)
            tensors[peft_key(layer, name, "B")] = np.ascontiguousarray(b[layer].T)
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_adapter_config(directory: Path) -> dict[str, Any]:
    return read_json_object(
        directory / CONFIG_FILE, if_missing=f"a PEFT adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}"
    )


def adapter_targets(config: dict[str, Any], file: Path, spec: ModelSpec) -> list[str]:
    """The targeted linear names of a PEFT LoRA config, refusing what this model cannot apply."""
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{file}: peft_type {config.get('peft_type')!r} is not LORA")
    for key, ok in (
        ("use_dora", False),
        ("fan_in_fan_out", False),
        ("bias", "none"),
        ("layers_to_transform", None),
        ("modules_to_save", None),
    ):
        if config.get(key, ok) not in (ok, [] if ok is None else ok):
            raise UserError(f"{file}: {key} = {config[key]!r} is not supported by the jax backend (expected {ok!r})")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise UserError(f"{file}: {key} is not supported by the jax backend (one r and lora_alpha for all modules)")
    targets = config.get("target_modules")
    if targets == ALL_LINEAR:
        return sorted(spec.linear_names)
    if not isinstance(targets, list) or not targets:
        raise UserError(f"{file}: target_modules must be a list of module names, got {targets!r}")
    unknown = [t for t in targets if t not in spec.linear_names]
    if unknown:
        raise UserError(
            f"{file}: target_modules {unknown} are not linear layers of a {spec.architecture} block "
            f"({', '.join(spec.linear_names)})"
        )
    return sorted(targets)


def load_adapter_arrays(directory: Path, spec: ModelSpec, targets: list[str], r: int) -> dict[str, np.ndarray]:
    """Stacked fp32 arrays by state name, every key and shape checked against the model."""
    file = directory / WEIGHTS_FILE
    if not file.is_file():
        raise UserError(f"{file}: missing; a PEFT adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    tensors = SafetensorsFiles([file], file)
    expected = set()
    out = {}
    dims = spec.linear_dims()
    for name in targets:
        n_in, n_out = dims[name]
        a = np.empty((spec.num_layers, n_in, r), np.float32)
        b = np.empty((spec.num_layers, r, n_out), np.float32)
        for layer in range(spec.num_layers):
            key_a, key_b = peft_key(layer, name, "A"), peft_key(layer, name, "B")
            expected.update((key_a, key_b))
            a[layer] = tensors.get(key_a, (r, n_in)).astype(np.float32).T
            b[layer] = tensors.get(key_b, (n_out, r)).astype(np.float32).T
        out[state_name(name, "A")], out[state_name(name, "B")] = a, b
    extra = sorted(set(tensors.names()) - expected)
    if extra:
        raise UserError(
            f"{file}: unexpected tensor {extra[0]!r} ({len(extra)} in all); the adapter does not match "
            f"this model's {spec.num_layers} layers and target_modules {targets}"
        )
    return out

"""PEFT-format adapters: written by peft itself, read back from any backend's files.

The saved files are peft's own (adapter_config.json + adapter_model.safetensors), so
``peft.PeftModel.from_pretrained`` loads them. Loading goes through our own key mapping instead
of peft's loader so that an adapter written by the jax backend (a minimal adapter_config.json)
loads too, and so that a mismatch is reported as one line naming the file and the tensor.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import read_json_object

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_NAME = "default"


def lora_parameters(peft_model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """LoRA parameters under their PEFT file names (peft's names without the adapter name),
    in module order; the same names key the optimizer state."""
    out = {}
    for name, param in peft_model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            out[name.replace(f".{ADAPTER_NAME}.", ".")] = param
    return out


def save_adapter(peft_model, directory: Path, base_model_name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    readme = directory / "README.md"
    had_readme = readme.exists()
    peft_model.peft_config[ADAPTER_NAME].base_model_name_or_path = base_model_name
    # save_embedding_layers=False: "auto" would look the base model name up on the Hugging Face Hub,
    # and LoRA here never targets embeddings (only linear layers pass resolve_targets).
    # The LoRA tensors are handed over rather than read through model.state_dict(): under FSDP2
    # that call reshards the model on the one process that saves, and the processes' next
    # forwards would then disagree on which weights to gather.
    lora_state = {
        name: p.detach() for name, p in peft_model.named_parameters() if ".lora_A." in name or ".lora_B." in name
    }
    peft_model.save_pretrained(
        str(directory), safe_serialization=True, save_embedding_layers=False, state_dict=lora_state
    )
    if not had_readme and readme.exists():
        readme.unlink()  # peft's model card is boilerplate; the run directory documents the run
    # peft keeps target_modules as a set and writes it in hash order; a stable order keeps
    # adapter_config.json byte-identical between identical runs.
    config_path = directory / ADAPTER_CONFIG
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_adapter_config(
    directory: Path, lora_r: int, lora_alpha: float, use_rslora: bool, target_modules: list[str]
) -> None:
    """The adapter's LoRA settings must be the run's: scaling is alpha / r, so a different
    alpha would silently change what the adapter does."""
    path = directory / ADAPTER_CONFIG
    config = read_json_object(path, if_missing=f"an adapter directory holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{path}: peft_type {config.get('peft_type')!r} is not LORA")
    checks = [
        ("r", "lora_r", lora_r),
        ("lora_alpha", "lora_alpha", lora_alpha),
        ("use_rslora", "use_rslora", use_rslora),
    ]
    for key, option, ours in checks:
        theirs = config.get(key, False if key == "use_rslora" else None)
        same = (
            theirs == ours
            if isinstance(ours, bool)
            else isinstance(theirs, (int, float)) and math.isclose(theirs, ours)
        )
        if not same:
            raise UserError(
                f"{path}: {key} is {theirs!r} but this run has {option} = {ours!r}; "
                f"set {option}: {theirs} to load this adapter"
            )
    theirs_modules = config.get("target_modules")
    if isinstance(theirs_modules, list) and sorted(theirs_modules) != sorted(target_modules):
        raise UserError(
            f"{path}: target_modules {sorted(theirs_modules)} differ from this run's "
            f"lora_target_modules {sorted(target_modules)}; set lora_target_modules to match"
        )


def load_adapter_weights(params: dict[str, torch.nn.Parameter], directory: Path) -> None:
    """Copy adapter_model.safetensors into the LoRA parameters, every key and shape checked."""
    path = directory / ADAPTER_WEIGHTS
    if not path.is_file():
        hint = (
            " (adapter_model.bin uses pickle, which loraswitch does not load)"
            if (directory / "adapter_model.bin").exists()
            else ""
        )
        raise UserError(f"{path}: missing{hint}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    for key in tensors:
        if key not in params:
            raise UserError(
                f"{path}: unexpected tensor {key!r}; the adapter was trained on a different "
                f"model or with different lora_target_modules"
            )
    for key, param in params.items():
        if key not in tensors:
            raise UserError(
                f"{path}: tensor {key!r} is missing; the adapter was trained on a different "
                f"model or with different lora_target_modules"
            )
        if tuple(tensors[key].shape) != tuple(param.shape):
            raise UserError(
                f"{path}: tensor {key!r} has shape {list(tensors[key].shape)}, this model expects {list(param.shape)}"
            )
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(tensors[key].to(device=param.device, dtype=param.dtype))

"""Check a Hugging Face model directory before a backend spends time loading it.

Every problem becomes one line naming the file, so a user sees "config.json: unsupported
architecture" rather than a framework traceback. Only safetensors headers are read
(core/files/safetensors_file.py), which makes the check cheap even for large models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import read_json_object
from loraswitch.core.files.safetensors_file import read_header as read_safetensors_header  # the one reader
from loraswitch.core.models.shapes import tensor_shapes

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
INDEX_FILE = "model.safetensors.index.json"
_REQUIRED_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a model directory: those the sharded index lists, else *.safetensors."""
    index = path / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index}: not a valid safetensors index (needs a JSON object with 'weight_map')") from e
        for name in names:
            if not (path / name).is_file():
                raise UserError(f"{path / name}: missing; {INDEX_FILE} lists it as a weight shard")
        return [path / n for n in names]
    return sorted(path.glob("*.safetensors"))


def read_config(path: Path) -> dict[str, Any]:
    return read_json_object(
        path / "config.json", if_missing="a model directory needs config.json, tokenizer.json and *.safetensors weights"
    )


def check_config(config: dict[str, Any], file: Path) -> None:
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise UserError(
            f"{file}: unsupported architecture {archs!r}; supported (Llama family): {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    for key in _REQUIRED_KEYS:
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise UserError(f"{file}: key {key!r} must be a positive integer, got {config.get(key)!r}")


def validate_model_dir(path: str | Path, *, weights: bool = True) -> None:
    """Raise UserError if ``path`` is not a loadable Llama-family HF directory. With
    ``weights=False`` (random-init sources) the weight files are not required."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"model: {path} is not a directory")
    config = read_config(path)
    check_config(config, path / "config.json")
    if not (path / "tokenizer.json").is_file():
        raise UserError(f"{path / 'tokenizer.json'}: missing; loraswitch tokenizes with the model's own tokenizer.json")
    if not weights:
        return
    files = weight_files(path)
    if not files:
        hint = (
            " (pickled .bin/.pt weights are not loaded: convert them to safetensors)" if any(path.glob("*.bin")) else ""
        )
        raise UserError(f"{path}: no *.safetensors weights{hint}")
    found: dict[str, tuple[Path, list[int]]] = {}
    for f in files:
        for name, info in read_safetensors_header(f).items():
            found[name] = (f, info["shape"])
    _check_shapes(config, found, path)


def _check_shapes(config: dict[str, Any], found: dict[str, tuple[Path, list[int]]], path: Path) -> None:
    """Compare the tensors most likely to reveal a wrong config (embedding, first and last layer)."""
    expected = tensor_shapes(config)
    last = config["num_hidden_layers"] - 1
    wanted = ["model.embed_tokens.weight"]
    for layer in sorted({0, last}):
        for mod in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ):
            wanted.append(f"model.layers.{layer}.{mod}.weight")
    for name in wanted:
        if name not in found:
            raise UserError(
                f"{path}: tensor {name!r} is missing from the safetensors weights (config.json says {config['num_hidden_layers']} layers)"
            )
        file, shape = found[name]
        if tuple(shape) != expected[name]:
            raise UserError(
                f"{file}: tensor {name!r} has shape {list(shape)} but config.json implies {list(expected[name])}"
            )

"""Check a Hugging Face model directory before a backend spends time loading it.

Every problem becomes one line naming the file, so a user sees "config.json: unsupported
architecture" rather than a framework traceback. Safetensors headers are parsed here with json
and struct (no tensor is read), which makes the check cheap even for large models.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import read_json_object
from loraswitch.core.models import families

INDEX_FILE = "model.safetensors.index.json"


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The header of a .safetensors file ({name: {dtype, shape, data_offsets}}), checked
    against the file size so a truncated download is caught."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise UserError(
                    f"{path}: safetensors header length {n} exceeds the file size {size}; the file is truncated or not safetensors"
                )
            header = json.loads(f.read(n))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: safetensors header is not valid JSON; the file is damaged or not safetensors") from e
    if not isinstance(header, dict):
        raise UserError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    for name, info in header.items():
        try:
            start, end = info["data_offsets"]
            shape = [int(d) for d in info["shape"]]
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}: safetensors entry {name!r} has no valid shape/data_offsets") from e
        if not 0 <= start <= end or end > data_size:
            raise UserError(
                f"{path}: tensor {name!r} ends at byte {end} but the file holds {data_size} data bytes; the file is truncated"
            )
        info["shape"] = shape
    return header


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


def check_config(config: dict[str, Any], file: Path) -> families.Family:
    """The family registry's check (core/models/families): a supported architecture, its keys."""
    return families.check_config(config, file)


def validate_model_dir(path: str | Path, *, weights: bool = True) -> None:
    """Raise UserError if ``path`` is not a loadable HF directory of a supported family. With
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
    """Compare the tensors most likely to reveal a wrong config: the embedding and every tensor
    of the first and last layer (linears, biases, norms, as the family describes them)."""
    spec = families.spec_from_config(config, path / "config.json", strict=False)
    expected = spec.tensor_shapes()
    wanted = ["model.embed_tokens.weight"]
    for layer in sorted({0, spec.num_layers - 1}):
        wanted += [f"model.layers.{layer}.{name}" for name in spec.layer_tensors()]
    for name in wanted:
        if name not in found:
            raise UserError(
                f"{path}: tensor {name!r} is missing from the safetensors weights "
                f"(config.json describes a {spec.num_layers}-layer {spec.architecture})"
            )
        file, shape = found[name]
        if tuple(shape) != expected[name]:
            raise UserError(
                f"{file}: tensor {name!r} has shape {list(shape)} but config.json implies {list(expected[name])}"
            )

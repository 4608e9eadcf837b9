"""The one check of a Hugging Face model directory, run before any backend spends time loading it.

Every backend relies on it (the model source calls it for a local directory, and the torch and
jax backends call it again on whatever ModelSource they are given), so a directory is accepted or
refused identically everywhere, with one line naming the file:

- config.json: one supported architecture whose ``model_type`` agrees, then that family's rules
  (families/: which family, its keys, types, finite values, what loraswitch computes);
- tokenizer.json present, and every id the tokenizer can produce inside the model's
  ``vocab_size`` (``check_tokenizer_fits``, run where the tokenizer is loaded);
- weights: the safetensors headers only (core/files/safetensors_header.py: format rules), streamed file
  by file; every tensor the family expects present with its shape, none unexpected, each a
  floating-point dtype (int or bool base weights would train a model of zeros).

Framework-free and header-only: nothing here imports torch or jax or reads a tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import read_json_object
from loraswitch.core.files.paths import directory, regular_file
from loraswitch.core.files.safetensors_header import read_safetensors_header
from loraswitch.core.models import families
from loraswitch.core.models.config_fields import positive_int
from loraswitch.core.models.families import SUPPORTED_ARCHITECTURES, Family, check_config

__all__ = ["SUPPORTED_ARCHITECTURES", "read_safetensors_header", "validate_model_dir", "weight_files"]

INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def validate_model_dir(path: str | Path, *, weights: bool = True) -> None:
    """Raise UserError if ``path`` is not a loadable model directory of a supported family.
    With ``weights=False`` (random-init sources) the weight files are not required."""
    root = directory(path, what="model directory")
    config = read_config(root)
    family = check_config(config, root / "config.json")
    regular_file(root / "tokenizer.json", missing="missing; loraswitch tokenizes with the model's own tokenizer.json")
    if weights:
        check_weights(root, config, family)


def read_config(path: Path) -> dict[str, Any]:
    return read_json_object(
        path / "config.json", if_missing="a model directory needs config.json, tokenizer.json and *.safetensors weights"
    )


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a model directory: those the sharded index lists, else *.safetensors."""
    index = path / INDEX_FILE
    if not (index.exists() or index.is_symlink()):
        return sorted(path.glob("*.safetensors"))
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UserError(f"{index}: not a valid safetensors index (needs a JSON object with 'weight_map')")
    names = sorted(set(weight_map.values()))
    for name in names:
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise UserError(f"{index}: weight_map names {name!r}, which is not a file in the model directory")
        regular_file(path / name, missing=f"missing; {INDEX_FILE} lists it as a weight shard")
    return [path / n for n in names]


def check_weights(path: Path, config: dict[str, Any], family: Family) -> None:
    """Every tensor ``family`` expects, with its shape and a float dtype, and nothing else.
    Headers are read one file at a time and only their entries are kept; the checks then run
    in the model's own order (embedding, layer 0, ...), so the first problem is reported."""
    files = weight_files(path)
    if not files:
        hint = (
            " (pickled .bin/.pt weights are not loaded: convert them to safetensors)" if any(path.glob("*.bin")) else ""
        )
        raise UserError(f"{path}: no *.safetensors weights{hint}")
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for file in files:
        for name, info in read_safetensors_header(file).items():
            if name in found:
                raise UserError(
                    f"{file}: tensor {name!r} is also in {found[name][0].name}; which one counts is unclear"
                )
            found[name] = (file, info)
    spec = family.spec(config, path / "config.json")
    expected = spec.tensor_shapes()
    missing = [n for n in expected if n not in found]
    for name, shape in expected.items():
        if name in found:
            _check_tensor(*found[name], name, shape)
        elif name == missing[0]:
            raise UserError(
                f"{path}: tensor {name!r} is missing from the safetensors weights (config.json says "
                f"{config['num_hidden_layers']} layers)"
                + (f"; {len(missing) - 1} more are missing" if len(missing) > 1 else "")
            )
    for name, (file, _) in found.items():
        if name not in expected and not families.may_carry(name, spec):
            raise UserError(
                f"{file}: unexpected tensor {name!r}; the weights do not belong to the "
                f"{family.architecture} that config.json describes"
            )


def _check_tensor(file: Path, info: dict[str, Any], name: str, shape: tuple[int, ...]) -> None:
    if info["dtype"] not in FLOAT_DTYPES:
        raise UserError(
            f"{file}: tensor {name!r} has dtype {info['dtype']}; base weights must be floating point "
            f"({', '.join(FLOAT_DTYPES)})"
        )
    if tuple(info["shape"]) != shape:
        raise UserError(
            f"{file}: tensor {name!r} has shape {list(info['shape'])} but config.json implies {list(shape)}"
        )


def check_tokenizer_fits(tokenizer: Any, path: Path) -> None:
    """Every id ``tokenizer`` (a ``tokenizers.Tokenizer`` loaded from ``path``) can produce, its
    vocabulary and added tokens, is below config.json's ``vocab_size``: an id past the embedding
    table is an IndexError on torch and silent garbage (NaN loss) on jax."""
    config_file = path / "config.json"
    vocab_size = positive_int(read_config(path), "vocab_size", config_file)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if not vocab:
        raise UserError(f"{path / 'tokenizer.json'}: the tokenizer has an empty vocabulary")
    token, top = max(vocab.items(), key=lambda kv: kv[1])
    if top >= vocab_size:
        raise UserError(
            f"{path / 'tokenizer.json'}: token {token!r} has id {top}, outside the model's vocabulary "
            f"({config_file.name} vocab_size {vocab_size}); the tokenizer does not belong to this model"
        )

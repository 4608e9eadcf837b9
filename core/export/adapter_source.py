"""Read a PEFT LoRA adapter for merging: one function, ``read_lora_adapter``.

Every backend writes peft's files (adapter_config.json + adapter_model.safetensors with keys
``base_model.model.<module path>.lora_A.weight`` [r, in] and ``...lora_B.weight`` [out, r]), so
one reader serves adapters from torch, jax, numpy and peft itself. It is generic over module
paths: nothing here knows a model family. adapter_config.json is read by the one adapter contract
(``core.adapters.peft_format``), so merge accepts, refuses and defaults exactly what the backends do;
this module only adds the float32 (A, B) pairs a merge folds in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loraswitch.core.adapters import peft_format
from loraswitch.core.errors import UserError

WEIGHTS_FILE = peft_format.WEIGHTS_FILE
_PREFIX = peft_format.PREFIX
_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}


@dataclass
class LoraAdapter:
    directory: Path
    r: int
    alpha: float
    use_rslora: bool
    base_model: str | None
    # module path (e.g. ``model.layers.0.self_attn.q_proj``) -> (A [r, in], B [out, r]) in float32
    modules: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        """peft's scaling: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @property
    def weights_file(self) -> Path:
        return self.directory / WEIGHTS_FILE


def read_lora_adapter(directory: Path) -> LoraAdapter:
    """The adapter in ``directory``, every setting and tensor checked (one-line UserErrors)."""
    directory = Path(directory)
    config = peft_format.read_adapter_config(directory)
    adapter = LoraAdapter(directory, config.r, config.lora_alpha, config.use_rslora, config.base_model_name_or_path)
    adapter.modules = _read_modules(directory / WEIGHTS_FILE, config.r)
    return adapter


def _read_modules(path: Path, r: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        pickled = (path.parent / "adapter_model.bin").exists()
        raise UserError(
            f"{path}: missing" + (" (adapter_model.bin uses pickle, which loraswitch does not load)" if pickled else "")
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        if key.endswith(".base_layer.weight"):
            continue  # a copy of a base layer peft saves beside a LoRA on lm_head; llama.cpp skips it too
        module, which = _split_key(key, path)
        if value.ndim != 2 or not np.issubdtype(value.dtype, np.floating):
            raise UserError(f"{path}: tensor {key!r} must be a 2-D float matrix, got {value.dtype} {list(value.shape)}")
        halves.setdefault(module, {})[which] = value
    if not halves:
        raise UserError(f"{path}: holds no LoRA tensors")
    modules = {}
    for module, pair in sorted(halves.items()):
        missing = {"A", "B"} - set(pair)
        if missing:
            raise UserError(f"{path}: {module} has no lora_{missing.pop()}.weight")
        a, b = pair["A"], pair["B"]
        if a.shape[0] != r or b.shape[1] != r:
            raise UserError(
                f"{path}: {module} has lora_A {list(a.shape)} and lora_B {list(b.shape)}, but r = {r} ({peft_format.CONFIG_FILE})"
            )
        modules[module] = (a.astype(np.float32), b.astype(np.float32))
    return modules


def _split_key(key: str, path: Path) -> tuple[str, str]:
    for suffix, which in _SUFFIXES.items():
        if key.startswith(_PREFIX) and key.endswith(suffix):
            return key[len(_PREFIX) : -len(suffix)], which
    if "lora_embedding" in key:
        raise UserError(f"{path}: tensor {key!r} is a LoRA on an embedding, which merging does not support")
    raise UserError(f"{path}: tensor {key!r} is not a PEFT LoRA weight (base_model.model.<module>.lora_A/B.weight)")

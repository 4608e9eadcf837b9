"""Turn a ModelSource into a frozen transformers model on the right device and dtype.

Checks happen before transformers sees the directory, because from_pretrained only warns about
missing tensors (and initialises them randomly) and its shape errors name no file; a user who
points at the wrong directory gets one line naming the file and the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from loraswitch.core.adapters.modules import resolve_target_modules
from loraswitch.core.errors import UserError
from loraswitch.core.models import model_dir
from loraswitch.core.models.model_dir import SUPPORTED_ARCHITECTURES
from loraswitch.core.types import ModelSource

# Tensors a checkpoint may carry that the model rebuilds itself.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class Placement:
    """Where and in what precision the model runs, and whether the forward is compiled."""

    device: torch.device
    dtype: torch.dtype
    compile: bool

    @property
    def precision(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"


def choose_placement(precision: str, compile_option: str, requested_device: str | None) -> Placement:
    """precision auto: bf16 on CUDA (where the GPU supports it), fp32 on CPU.
    compile auto: on for CUDA only (on CPU the compile time outweighs the gain for small runs)."""
    if requested_device:
        try:
            device = torch.device(requested_device)
        except RuntimeError as e:
            raise UserError(f"LORASWITCH_TORCH_DEVICE={requested_device}: not a torch device ({e})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(
                f"LORASWITCH_TORCH_DEVICE={requested_device}: CUDA is not available "
                f"(torch {torch.__version__}, no visible GPU); unset it to train on the CPU"
            )
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"LORASWITCH_TORCH_DEVICE={requested_device}: only "
                f"{torch.cuda.device_count()} CUDA device(s) are visible"
            )
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())

    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if precision == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" and bf16_ok else torch.float32
    elif precision == "bf16":
        if not bf16_ok:
            raise UserError(
                f"precision: bf16 is not supported by {torch.cuda.get_device_name(device)}; use precision: fp32"
            )
        dtype = torch.bfloat16
    else:
        dtype = torch.float32

    use_compile = {"auto": device.type == "cuda", "true": True, "false": False}[compile_option]
    return Placement(device, dtype, use_compile)


def architecture_of(model: ModelSource) -> str:
    """The transformers class to build; validate_model_dir has already refused other architectures."""
    config = model_dir.read_config(model.path)
    return next(a for a in config.get("architectures", []) if a in SUPPORTED_ARCHITECTURES)


def _model_class(architecture: str):
    import transformers

    return getattr(transformers, architecture)


def _hf_config(model: ModelSource, architecture: str):
    cls = _model_class(architecture)
    try:
        return cls.config_class.from_pretrained(str(model.path), local_files_only=True)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise UserError(f"{model.path / 'config.json'}: cannot be read as a {architecture} config: {e}") from None


def check_weight_files(model: ModelSource, architecture: str, expected: dict[str, tuple[int, ...]], tied: bool) -> None:
    """Every tensor the model needs is present, with the shape config.json implies, and nothing
    else: validate_model_dir samples a few tensors, this checks all of them against the
    transformers class itself (from_pretrained would only warn and initialise a missing one)."""
    seen: dict[str, Path] = {}
    for file in model_dir.weight_files(model.path):
        for name, info in model_dir.read_safetensors_header(file).items():
            if name.endswith(_IGNORED_SUFFIXES) or (tied and name == "lm_head.weight"):
                continue
            if name not in expected:
                raise UserError(
                    f"{file}: unexpected tensor {name!r}; the weights do not belong to "
                    f"the {architecture} that config.json describes"
                )
            shape = tuple(info.get("shape", ()))
            if shape != expected[name]:
                raise UserError(
                    f"{file}: tensor {name!r} has shape {list(shape)} but config.json implies {list(expected[name])}"
                )
            seen[name] = file
    missing = [n for n in expected if n not in seen]
    if missing:
        raise UserError(
            f"{model.path}: tensor {missing[0]!r} is missing from the *.safetensors files"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )


def expected_shapes(hf_config, architecture: str) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes, from a model built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        skeleton = _model_class(architecture)(hf_config)
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    return {
        name: tuple(t.shape)
        for name, t in skeleton.state_dict().items()
        if not (tied and name == "lm_head.weight") and not name.endswith(_IGNORED_SUFFIXES)
    }


def load_base_model(model: ModelSource, placement: Placement) -> torch.nn.Module:
    """The frozen base model, on ``placement.device`` in ``placement.dtype``, SDPA attention."""
    model_dir.validate_model_dir(model.path, weights=not model.random_init)
    architecture = architecture_of(model)
    hf_config = _hf_config(model, architecture)
    cls = _model_class(architecture)
    with _quiet_transformers():
        if model.random_init:
            # Built directly on the device: a llama-8b never exists on the host.
            torch.manual_seed(model.init_seed)
            with torch.device(placement.device):
                base = cls._from_config(hf_config, dtype=placement.dtype, attn_implementation="sdpa")
        else:
            tied = bool(getattr(hf_config, "tie_word_embeddings", False))
            check_weight_files(model, architecture, expected_shapes(hf_config, architecture), tied)
            base = cls.from_pretrained(
                str(model.path),
                config=hf_config,
                dtype=placement.dtype,
                attn_implementation="sdpa",
                use_safetensors=True,
                local_files_only=True,
            )
            base = base.to(placement.device)
    base.requires_grad_(False)
    base.config.use_cache = False  # training never needs a KV cache; generate() asks for one itself
    return base


class _quiet_transformers:
    """transformers draws a progress bar per load; the run has its own progress display."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        self._verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._verbosity)
        if self._bars:
            hf_logging.enable_progress_bar()
        return False


def linear_module_names(base: torch.nn.Module) -> list[str]:
    """The short names LoRA can target (``q_proj``, ``down_proj``, ``lm_head``...)."""
    return sorted(
        {name.rsplit(".", 1)[-1] for name, m in base.named_modules() if isinstance(m, torch.nn.Linear) and name}
    )


def check_target_modules(base: torch.nn.Module, targets: list[str]) -> list[str]:
    """The targeted short names, sorted ("all-linear": the seven projections), each a linear layer of ``base``."""
    available = linear_module_names(base)
    targets = resolve_target_modules(targets)
    for name in targets:
        if name not in available:
            raise UserError(
                f"lora_target_modules: {name!r} is not a linear layer of this model; "
                f"its linear layers are: {', '.join(available)}"
            )
    return targets

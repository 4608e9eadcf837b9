"""Turn a ModelSource into a frozen transformers model on the right device and dtype.

The directory is checked before transformers sees it (core/models/model_dir.py, the check every
backend shares), because from_pretrained only warns about missing tensors (and initialises them
randomly) and its shape errors name no file; a user who points at the wrong directory gets one
line naming the file and the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraswitch.backends.torch_peft import random_init
from loraswitch.core.errors import UserError
from loraswitch.core.models import families, model_dir
from loraswitch.core.types import ModelSource


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


def family_of(model: ModelSource) -> families.Family:
    """The model's family in the registry (core/models/families), config.json checked."""
    return families.check_config(model_dir.read_config(model.path), model.path / "config.json")


def architecture_of(model: ModelSource) -> str:
    """The transformers class to build: the family's (Qwen3ForCausalLM...)."""
    return family_of(model).architecture


def _model_class(architecture: str):
    import transformers

    return getattr(transformers, architecture)


def _hf_config(model: ModelSource, architecture: str):
    cls = _model_class(architecture)
    try:
        return cls.config_class.from_pretrained(str(model.path), local_files_only=True)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise UserError(f"{model.path / 'config.json'}: cannot be read as a {architecture} config: {e}") from None


def attention_implementation(model: ModelSource) -> str:
    """transformers' attention for this model: SDPA, except where SDPA cannot express the
    attention: Gemma 2's soft-capped scores need transformers' eager path (exact)."""
    return "eager" if spec_of(model).attn_softcap is not None else "sdpa"


def spec_of(model: ModelSource) -> families.ModelSpec:
    return families.spec_from_config(model_dir.read_config(model.path), model.path / "config.json")


def load_base_model(model: ModelSource, placement: Placement) -> torch.nn.Module:
    """The frozen base model, on ``placement.device`` in ``placement.dtype``, SDPA attention
    (eager where SDPA cannot express the model's attention: ``attention_implementation``)."""
    model_dir.validate_model_dir(model.path, weights=not model.random_init)
    architecture = architecture_of(model)
    hf_config = _hf_config(model, architecture)
    attention = attention_implementation(model)
    cls = _model_class(architecture)
    with _quiet_transformers():
        if model.random_init:
            # Built directly on the device (a llama-8b never exists on the host), then filled
            # with the core's random values: the same model on every backend and sharding.
            with torch.device(placement.device):
                base = cls._from_config(hf_config, dtype=placement.dtype, attn_implementation=attention)
            random_init.fill_model(base, model.init_seed)
        else:
            base = cls.from_pretrained(
                str(model.path),
                config=hf_config,
                dtype=placement.dtype,
                attn_implementation=attention,
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
    """The short names of the model's linear layers (``q_proj``, ``down_proj``, ``lm_head``...)."""
    return sorted(
        {name.rsplit(".", 1)[-1] for name, m in base.named_modules() if isinstance(m, torch.nn.Linear) and name}
    )


# LoRA on the output head: peft supports it and so does this backend (not the jax one).
EXTRA_TARGETS = ("lm_head",)


def resolve_targets(model: ModelSource, base: torch.nn.Module, modules: list[str]) -> list[str]:
    """Config ``lora_target_modules`` through the family registry (``all-linear``: the block's
    linears), each name then confirmed in the built model."""
    targets = families.resolve_target_modules(family_of(model), modules, also=EXTRA_TARGETS)
    available = linear_module_names(base)
    missing = [name for name in targets if name not in available]
    if missing:
        raise UserError(
            f"lora_target_modules: {missing[0]!r} is not a linear layer of this model; "
            f"its linear layers are: {', '.join(available)}"
        )
    return targets

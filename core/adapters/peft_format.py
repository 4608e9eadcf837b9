"""The PEFT adapter format, read, checked and written in one place, with numpy.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors``, exactly
as ``peft``'s ``save_pretrained`` writes them, so an adapter trained by any backend loads in
``peft.PeftModel.from_pretrained`` and in every other backend:

- tensors ``base_model.model.<module path>.lora_A.weight`` [r, in] and ``...lora_B.weight``
  [out, r], fp32 (fp16/bf16 files are read too, widened to fp32);
- in adapter_config.json loraswitch reads ``r``, ``lora_alpha``, ``use_rslora``,
  ``target_modules`` (a list of module names or "all-linear"), ``lora_dropout``,
  ``base_model_name_or_path`` and ``peft_type``; an absent key means peft's default (r 8,
  lora_alpha 8, use_rslora false, lora_dropout 0, target_modules q_proj and v_proj, peft's choice
  for Llama and Mistral);
- any option that changes what the adapter computes and that loraswitch does not implement
  (DoRA, biases, per-module ranks, layer selection, modules_to_save, initialisations that
  rewrite the base weights, ...) is refused in one line naming the key, rather than loaded and
  silently applied wrongly.

Backends pass arrays in and get arrays out; only the copy into their own parameters is theirs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loraswitch.core.adapters.modules import ALL_LINEAR, PEFT_DEFAULT_TARGETS, resolve_target_modules
from loraswitch.core.errors import UserError
from loraswitch.core.files.atomic import atomic_write_text
from loraswitch.core.files.json_file import read_json_object
from loraswitch.core.files.safetensors_file import FLOAT_CODES, read_tensors, tensor_dtypes, write_tensors

if TYPE_CHECKING:
    from loraswitch.core.config import Config

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
WHAT_IT_HOLDS = f"a PEFT adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}"

# Keys loraswitch reads, or that carry no meaning for what a plain LoRA computes. Any other key
# must be absent or hold its "off" value (null, false, "none", {} or []).
_READ_OR_HARMLESS = {
    "peft_type",
    "task_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "use_rslora",
    "target_modules",
    "base_model_name_or_path",
    "init_lora_weights",
    "auto_mapping",
    "peft_version",
    "revision",
    "inference_mode",
    "megatron_core",
    "qalora_group_size",
    "runtime_config",
    "ensure_weight_tying",
}
_OFF_VALUES: tuple[Any, ...] = (None, False, "none", {}, [])
# initialisations that only choose the starting A and B; the others (pissa, olora, loftq, corda...)
# rewrite the base weights, so their adapters need a base model loraswitch does not build.
_PLAIN_INITS: tuple[Any, ...] = (True, False, "gaussian", "eva")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def tensor_name(module_path: str, which: str) -> str:
    """PEFT's name of the A or B tensor of ``module_path`` (``which`` is "A" or "B")."""
    return f"{PREFIX}{module_path}.lora_{which}.weight"


def module_of(name: str) -> tuple[str, str]:
    """(module path, "A" or "B") of a PEFT tensor name."""
    for which in ("A", "B"):
        suffix = f".lora_{which}.weight"
        if name.startswith(PREFIX) and name.endswith(suffix):
            return name[len(PREFIX) : -len(suffix)], which
    raise ValueError(f"{name!r} is not a PEFT LoRA tensor name")


def expected_shapes(modules: dict[str, tuple[int, int]], r: int) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape for adapted modules given as module path -> (in, out) features."""
    out: dict[str, tuple[int, ...]] = {}
    for path, (n_in, n_out) in modules.items():
        out[tensor_name(path, "A")] = (r, n_in)
        out[tensor_name(path, "B")] = (n_out, r)
    return out


@dataclass(frozen=True)
class AdapterConfig:
    """The LoRA settings of an adapter; defaults are peft's."""

    r: int = 8
    lora_alpha: float = 8.0
    use_rslora: bool = False
    target_modules: list[str] = field(default_factory=lambda: list(PEFT_DEFAULT_TARGETS))
    lora_dropout: float = 0.0
    base_model_name_or_path: str | None = None

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @classmethod
    def of_run(cls, config: Config, base_model: str | None, targets: list[str] | None = None) -> AdapterConfig:
        """The adapter a run with ``config`` trains; ``targets``: the module names the backend
        resolved through the model's family (``all-linear`` is family-specific: Phi-3's fused
        ``qkv_proj``...), else ``config.lora_target_modules`` read as a Llama block's."""
        return cls(
            r=config.lora_r,
            lora_alpha=float(config.lora_alpha),
            use_rslora=config.use_rslora,
            target_modules=sorted(targets)
            if targets is not None
            else resolve_target_modules(config.lora_target_modules),
            lora_dropout=config.lora_dropout,
            base_model_name_or_path=base_model,
        )

    def run_values(self) -> dict[str, Any]:
        """The config keys a run (or ``generate``/``evaluate``) needs to build these LoRA layers."""
        return {
            "lora_r": self.r,
            "lora_alpha": self.lora_alpha,
            "use_rslora": self.use_rslora,
            "lora_target_modules": list(self.target_modules),
        }

    def to_json(self) -> dict[str, Any]:
        """adapter_config.json's content: the keys peft has read since 0.13, so older peft loads
        it too (newer keys such as ``peft_version`` are left out)."""
        alpha = int(self.lora_alpha) if float(self.lora_alpha).is_integer() else self.lora_alpha
        return {
            "alpha_pattern": {},
            "auto_mapping": None,
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "init_lora_weights": True,
            "layer_replication": None,
            "layers_pattern": None,
            "layers_to_transform": None,
            "loftq_config": {},
            "lora_alpha": alpha,
            "lora_dropout": self.lora_dropout,
            "megatron_config": None,
            "megatron_core": "megatron.core",
            "modules_to_save": None,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": None,
            "target_modules": sorted(self.target_modules),
            "task_type": "CAUSAL_LM",
            "use_dora": False,
            "use_rslora": self.use_rslora,
        }


def read_adapter_config(directory: Path) -> AdapterConfig:
    """adapter_config.json of ``directory``, checked; every problem one line naming the key."""
    path = Path(directory) / CONFIG_FILE
    raw = read_json_object(path, if_missing=WHAT_IT_HOLDS)
    _refuse_unsupported(raw, path)
    defaults = AdapterConfig()
    r = raw.get("r", defaults.r)
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise UserError(f"{path}: r = {r!r}: must be a positive integer")
    alpha = raw.get("lora_alpha", defaults.lora_alpha)
    if not _is_number(alpha) or alpha <= 0:
        raise UserError(f"{path}: lora_alpha = {alpha!r}: must be a positive number")
    rslora = raw.get("use_rslora", defaults.use_rslora)
    if not isinstance(rslora, bool):
        raise UserError(f"{path}: use_rslora = {rslora!r}: must be true or false")
    dropout = raw.get("lora_dropout", defaults.lora_dropout)
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise UserError(f"{path}: lora_dropout = {dropout!r}: must be a number in [0, 1)")
    base = raw.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise UserError(f"{path}: base_model_name_or_path = {base!r}: must be a string or null")
    return AdapterConfig(
        r=r,
        lora_alpha=float(alpha),
        use_rslora=rslora,
        target_modules=_targets(raw, path),
        lora_dropout=float(dropout),
        base_model_name_or_path=base or None,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _refuse_unsupported(raw: dict[str, Any], path: Path) -> None:
    peft_type = raw.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise UserError(f"{path}: peft_type = {peft_type!r}: loraswitch loads LoRA adapters only (peft_type LORA)")
    task = raw.get("task_type")
    if task not in (None, "CAUSAL_LM"):
        raise UserError(f"{path}: task_type = {task!r}: loraswitch loads causal language model adapters only")
    init = raw.get("init_lora_weights", True)
    if not any(init is v or (isinstance(init, str) and init == v) for v in _PLAIN_INITS):
        raise UserError(
            f"{path}: init_lora_weights = {init!r} rewrites the base model's weights, "
            "which loraswitch does not do; convert the adapter to a plain LoRA first"
        )
    for key, value in raw.items():
        if key not in _READ_OR_HARMLESS and not any(value == off and type(value) is type(off) for off in _OFF_VALUES):
            raise UserError(f"{path}: {key} = {value!r} is not supported (loraswitch applies plain LoRA only)")


def _targets(raw: dict[str, Any], path: Path) -> list[str]:
    targets = raw.get("target_modules", list(PEFT_DEFAULT_TARGETS))
    if targets is None:
        targets = list(PEFT_DEFAULT_TARGETS)
    if isinstance(targets, str) and targets != ALL_LINEAR:
        raise UserError(
            f"{path}: target_modules = {targets!r}: a regular expression is not supported; "
            f'list module names (["q_proj", "v_proj"]) or use "{ALL_LINEAR}"'
        )
    if targets == ALL_LINEAR:
        return resolve_target_modules(targets)
    names = targets
    if not isinstance(names, list) or not names or not all(isinstance(t, str) and _NAME.match(t) for t in names):
        raise UserError(f"{path}: target_modules = {targets!r}: must be a non-empty list of module names")
    return resolve_target_modules(names, f"{path}: target_modules")


def check_matches_run(
    adapter: AdapterConfig, config: Config, directory: Path, targets: list[str] | None = None
) -> None:
    """An adapter loaded into a run's LoRA layers must have been trained with the same shape and
    scaling: a different lora_alpha would silently change what the adapter does. ``targets``:
    the run's resolved module names (``AdapterConfig.of_run``)."""
    path = Path(directory) / CONFIG_FILE
    ours = AdapterConfig.of_run(config, None, targets)
    for key, option in (("r", "lora_r"), ("lora_alpha", "lora_alpha"), ("use_rslora", "use_rslora")):
        theirs, mine = getattr(adapter, key), getattr(ours, key)
        same = theirs == mine if isinstance(mine, bool) else math.isclose(theirs, mine)
        if not same:
            shown = int(theirs) if isinstance(theirs, float) and theirs.is_integer() else theirs
            raise UserError(
                f"{path}: {key} = {shown!r} but this run has {option} = {getattr(config, option)!r}; "
                f"set {option}: {json.dumps(shown)} to load this adapter"
            )
    if resolve_target_modules(adapter.target_modules) != ours.target_modules:
        raise UserError(
            f"{path}: target_modules = {sorted(adapter.target_modules)} but this run has lora_target_modules = "
            f"{ours.target_modules}; set lora_target_modules to match the adapter"
        )


def read_adapter_weights(directory: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """adapter_model.safetensors as fp32 arrays, exactly the ``expected`` names and shapes."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file() and (Path(directory) / "adapter_model.bin").exists():
        raise UserError(f"{path}: missing (adapter_model.bin uses pickle, which loraswitch does not load)")
    dtypes = tensor_dtypes(path) if path.is_file() else {}
    tensors = read_tensors(path, if_missing=WHAT_IT_HOLDS)
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise UserError(
            f"{path}: unexpected tensor {extra[0]!r} ({len(extra)} in all); the adapter was trained on "
            "another model or with other lora_target_modules"
        )
    for name, shape in expected.items():
        if name not in tensors:
            raise UserError(
                f"{path}: tensor {name!r} is missing; the adapter was trained on another model "
                "or with other lora_target_modules"
            )
        if tuple(tensors[name].shape) != tuple(shape):
            raise UserError(
                f"{path}: tensor {name!r} has shape {list(tensors[name].shape)}, this model expects {list(shape)}"
            )
        if dtypes[name] not in FLOAT_CODES:
            raise UserError(f"{path}: tensor {name!r} has dtype {dtypes[name]}, expected a float type")
    return {name: tensors[name].astype(np.float32, copy=False) for name in expected}


def write_adapter(directory: Path, config: AdapterConfig, tensors: dict[str, np.ndarray]) -> None:
    """Both files, each atomically; tensors fp32 in PEFT's layout, in the order given."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.asarray(value, np.float32) for name, value in tensors.items()}
    write_tensors(directory / WEIGHTS_FILE, arrays, metadata={"format": "pt"})
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n")

"""The hyperparameter schema: seed names and defaults are the public contract.

Sources, later wins: defaults < config file (YAML or TOML) < environment (LORASWITCH_<KEY>) <
CLI flags named exactly as the keys (``--lora_alpha 32``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loraswitch.core.errors import UserError
from loraswitch.core.files.config_text import load_toml, load_yaml
from loraswitch.core.files.paths import read_bounded

MAX_CONFIG_BYTES = 16 * 1024 * 1024  # a config file is a few hundred bytes; refuse reading a disk image
DEFAULT_TARGET_MODULES = ["all-linear"]  # resolved per model family (core/models/families)
Tracker = Literal["tensorboard", "mlflow", "wandb", "none"]
DataFormat = Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"]  # core/data/shapes.py
_NO_TRACKER: list[Tracker] = ["none"]
# Names a chat template always receives from loraswitch; chat_template_kwargs may not replace them.
RESERVED_TEMPLATE_ARGS = ("messages", "add_generation_prompt", "bos_token", "eos_token", "tools", "documents")


class Config(BaseModel):
    """Every key a run accepts. Descriptions feed the README table and ``loraswitch config``."""

    # allow_inf_nan=False: every float is finite, from a file (.inf), LORASWITCH_* ("inf") or a
    # flag (1e999); an infinite learning rate or alpha would only surface as a NaN loss at step 2.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, validate_default=True, protected_namespaces=(), allow_inf_nan=False
    )

    # --- seed hyperparameters: names and defaults of the original hyperparameter document (public schema)
    lora_alpha: float = Field(
        64,
        gt=0,
        description="LoRA alpha; the update is scaled by lora_alpha / lora_r (or / sqrt(lora_r) with use_rslora).",
    )
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input, in [0, 1).")
    batch_size: int = Field(4, gt=0, description="Examples per micro-batch (global, over all devices).")
    accumulation_steps: int = Field(
        4, gt=0, description="Micro-batches per optimizer step; a step sees batch_size x accumulation_steps examples."
    )
    n_steps: int = Field(500, gt=0, description="Stop after this many optimizer steps.")
    n_epochs: int = Field(500, gt=0, description="Stop after this many passes over the training split.")
    learning_rate_multiplier: float = Field(
        2.5e-5, gt=0, description="Peak learning rate: lr(t) = learning_rate_multiplier x shape(t)."
    )
    training_split: float = Field(
        0.8, gt=0, lt=1, description="Fraction of the data that trains after one seeded shuffle; the rest validates."
    )
    stop_eval_loss: float = Field(0.01, ge=0, description="Stop when the eval loss drops below this.")

    # --- what a real run needs
    lora_r: int = Field(16, gt=0, description="LoRA rank.")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        min_length=1,
        description="Linear layers that get LoRA, by module name (q_proj, ...), or all-linear: every linear "
        "layer of the model family's decoder block (docs/models.md).",
    )
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA: scale by lora_alpha / sqrt(lora_r).")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra arguments for the model's chat template, e.g. {enable_thinking: false} for Qwen3; used "
        "in training, evaluation and generation and recorded with the adapter (loraswitch.json).",
    )
    dropout_masks: Literal["portable", "framework"] = Field(
        "portable",
        description="LoRA dropout masks: portable (a hash of seed, step, micro-batch, layer, module and element: "
        "the same masks on every backend, device and device count) or framework (the framework's own "
        "random generator: torch.manual_seed / jax.random; masks differ between backends).",
    )
    max_seq_len: int = Field(1024, gt=1, description="Examples longer than this are truncated (and counted).")
    packing: bool = Field(
        False,
        description="Pack whole examples into max_seq_len rows instead of padding each; attention and rope "
        "positions stay per example, so the loss is the same as unpacked (docs/packing.md).",
    )
    group_by_length: bool = Field(
        False,
        description="Unpacked: sort each run of 50 micro-batches of the shuffled order by length, so a "
        "micro-batch pads little (transformers' group_by_length).",
    )
    pad_to_multiple_of: int = Field(
        16,
        gt=0,
        description="Unpacked micro-batches pad to their longest example rounded up to this (fewer shapes to "
        "compile; 64 suits jit backends on GPU).",
    )
    seed: int = Field(0, ge=0, description="Seeds the split, the data order, LoRA init and dropout.")
    eval_every: int = Field(
        50, gt=0, description="Evaluate on the validation split every this many steps (and at the end)."
    )
    save_every: int = Field(
        100, gt=0, description="Write a resumable checkpoint every this many steps (and at the end)."
    )
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant",
        description="Shape of the learning rate: constant, or linear/cosine decay to 0 at n_steps after warmup.",
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup from 0 to the peak over this many steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay on the LoRA weights.")
    max_grad_norm: float | None = Field(
        None, gt=0, description="Clip the global gradient norm to this (off when null)."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU/TPU, fp32 on CPU.")
    compile: Literal["auto", "true", "false"] = Field(
        "auto", description="torch backend: torch.compile the step (auto: on CUDA only)."
    )
    gradient_checkpointing: Literal["auto", "off", "full", "dots"] = Field(
        "auto",
        description="Recompute activations in the backward pass to save memory: off; full (each layer's); "
        "dots (keep matrix-product outputs, recompute the rest); auto: by model size and free memory "
        "(docs/memory.md). true/false mean full/off.",
    )
    mesh: dict[str, int] | None = Field(
        None,
        description="Device mesh {data: D, fsdp: F}: D x F devices (torch: processes), base weights sharded F ways; "
        "null: all data-parallel (docs/distributed.md).",
    )
    backend: str = Field(
        "torch", description="Training backend: torch, jax, or one a plugin registers (`loraswitch backends`)."
    )
    model: str = Field(
        "builtin:smollm2-135m", description="A local Hugging Face directory, builtin:smollm2-135m, or random:<shape>."
    )
    data: str | None = Field(
        None,
        description="Training data: JSONL, a JSON array, parquet, CSV, a datasets save_to_disk directory, or "
        "hf:NAME[:SPLIT] from the local datasets cache (docs/data.md).",
    )
    validation_data: str | None = Field(
        None, description="Separate validation data (any source data accepts); when set, all of data trains."
    )
    data_format: DataFormat = Field(
        "auto",
        description="Record shape: auto (detected per record), messages, sharegpt, alpaca, prompt_completion or text.",
    )
    data_fields: dict[str, str] = Field(
        default_factory=dict,
        description="The data's own keys under loraswitch's names, e.g. {prompt: question, completion: answer}.",
    )
    output_dir: str = Field("runs/run", description="The run directory.")
    log_every: int = Field(1, gt=0, description="Progress/metrics line every this many steps.")
    eval_batches: int | None = Field(
        None, gt=0, description="Cap the number of validation micro-batches per eval (null: all)."
    )
    report_to: list[Tracker] = Field(
        default_factory=lambda: _NO_TRACKER.copy(),
        description="Experiment trackers that also get the metrics: tensorboard, mlflow, wandb (each a pip extra), "
        "or none (metrics.jsonl and loss.png only).",
    )

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _split_modules(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [m.strip() for m in v.split(",") if m.strip()]
        return v

    @field_validator("report_to", mode="before")
    @classmethod
    def _split_trackers(cls, v: Any) -> Any:
        if isinstance(v, str):  # `--report_to tensorboard,wandb`, as HF's report_to also takes one name
            return [t.strip() for t in v.split(",") if t.strip()]
        return v

    @field_validator("report_to")
    @classmethod
    def _none_alone(cls, v: list[Tracker]) -> list[Tracker]:
        chosen = list(dict.fromkeys(v))  # a name given twice is one tracker
        if "none" in chosen and len(chosen) > 1:
            raise ValueError("none means no tracker and cannot be combined with tracker names")
        return chosen or ["none"]

    @field_validator("data_fields")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        from loraswitch.core.data.shapes import FIELDS

        for ours, theirs in v.items():
            if ours not in FIELDS:
                raise ValueError(f"{ours!r} is not a field loraswitch reads; use one of {', '.join(FIELDS)}")
            if not theirs:
                raise ValueError(f"{ours!r}: the data's key must be a non-empty string")
        return v

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not name.isidentifier():
                raise ValueError(f"{name!r} is not a template variable name")
            if name in RESERVED_TEMPLATE_ARGS:
                raise ValueError(f"{name!r} is set by loraswitch itself and cannot be overridden")
        return v

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, v: Any, info: Any) -> Any:
        # pydantic reads true as 1; `batch_size: yes` in YAML is a mistake, not a batch of one.
        if isinstance(v, bool) and cls.model_fields[info.field_name].annotation in (
            int,
            float,
            int | None,
            float | None,
        ):
            raise ValueError("must be a number, not true/false")
        return v

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_bool(cls, v: Any) -> Any:
        return str(v).lower() if isinstance(v, bool) else v

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _checkpointing_bool(cls, v: Any) -> Any:
        return {True: "full", False: "off"}[v] if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _limits(self) -> Config:
        if self.warmup_steps > self.n_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed n_steps ({self.n_steps})")
        return self


KEYS = list(Config.model_fields)


def defaults() -> dict[str, Any]:
    return Config().model_dump()


def _nearest(key: str) -> str:
    close = difflib.get_close_matches(key, KEYS, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) config file into a dict; errors name the file."""
    p = Path(path)
    raw = read_bounded(p, MAX_CONFIG_BYTES, missing="config file not found", what="config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: config file is not UTF-8 text (byte {e.start})") from e
    data = load_toml(text, str(p)) if p.suffix == ".toml" else load_yaml(text, str(p))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: a config file must be a mapping of key: value, got {type(data).__name__}")
    return data


def _parse_scalar(text: str, where: str) -> Any:
    """A value from the environment or the command line: JSON/YAML scalars, lists or plain strings."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise UserError(f"{where}: value nested too deeply") from None


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    source: Mapping[str, str] = os.environ if environ is None else environ
    out = {}
    for key in KEYS:
        name = f"LORASWITCH_{key.upper()}"
        if name in source:
            out[key] = _parse_scalar(source[name], f"environment {name}")
    return out


def parse_cli_overrides(args: list[str]) -> dict[str, Any]:
    """``--key value`` or ``--key=value`` pairs, named exactly as the schema keys."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}; overrides are --KEY VALUE")
        key, eq, value = arg[2:].partition("=")
        if key not in KEYS:
            raise UserError(f"unknown option --{key}{_nearest(key)}")
        if not eq:
            if i + 1 >= len(args):
                raise UserError(f"--{key} needs a value")
            value = args[i + 1]
            i += 1
        out[key] = _parse_scalar(value, f"--{key}")
        i += 1
    return out


def _check_keys(values: dict[str, Any], origin: str) -> None:
    for key in values:
        if key not in KEYS:
            raise UserError(f"{origin}: unknown key {key!r}{_nearest(str(key))}")


def validate(values: dict[str, Any], origin: str = "config", origins: dict[str, str] | None = None) -> Config:
    """Build a Config, turning the first pydantic error into one line naming key, value and rule.
    ``origins`` names where a key's value came from when that is not ``origin`` (the
    environment, the command line), so the user is sent to the right place to fix it."""
    _check_keys(values, origin)
    try:
        return Config(**values)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["loc"]:
            where = (origins or {}).get(str(err["loc"][0]), origin)
            raise UserError(f"{where}: {key} = {err.get('input')!r}: {msg}") from None
        raise UserError(f"{origin}: {msg}") from None


def resolve(
    config_file: str | Path | None = None, cli: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> Config:
    """Merge the sources in order (defaults < file < environment < CLI) and validate."""
    values: dict[str, Any] = {}
    origin = "config"
    if config_file is not None:
        file_values = read_config_file(config_file)
        _check_keys(file_values, str(config_file))
        values.update(file_values)
        origin = str(config_file)
    env = env_overrides(environ)
    values.update(env)
    values.update(cli or {})
    origins = {key: f"environment LORASWITCH_{key.upper()}" for key in env}
    origins.update({key: "command line" for key in cli or {}})
    config = validate(values, origin, origins)
    if config_file is not None:
        _resolve_paths_relative_to(config, Path(config_file).parent, file_values)
    return config


def _resolve_paths_relative_to(config: Config, base: Path, file_values: dict[str, Any]) -> None:
    """Data paths written in a config file are relative to that file, as users expect."""
    for key in ("data", "validation_data"):
        value = getattr(config, key)
        if value and value.startswith("hf:"):
            continue  # a datasets cache name, not a path
        if value and key in file_values and value == file_values[key] and not Path(value).is_absolute():
            candidate = base / value
            if candidate.exists() or not Path(value).exists():
                setattr(config, key, str(candidate))

"""What every system in one bench invocation shares: settings, data and the FLOPs count.

One ``BenchSettings`` object is validated once and handed, unchanged, to every worker process;
there is no per-system override, so a table can never silently compare different jobs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loraswitch.core.config import DEFAULT_TARGET_MODULES
from loraswitch.core.errors import UserError
from loraswitch.core.models.shapes import SHAPES, shape_config

HF_REFERENCE = "hf-reference"  # plain transformers + peft, eager: the baseline every ratio is against
HF_COMPILE = "hf-compile"  # the same with torch.compile: the strongest plain torch peer
HF_LIGER = "hf-liger"  # the same with Liger kernels, where liger-kernel is installed
HF_SYSTEMS = {HF_REFERENCE: (), HF_COMPILE: (), HF_LIGER: ("liger_kernel",)}  # name -> extra modules it needs
# Dense bf16 matrix-product rate measured on the H200 used for the reference numbers
# (8192^3 products on random data, measured on the device); MFU is reported against it.
H200_BF16_PEAK_FLOPS = 790e12


class BenchSettings(BaseModel):
    """The whole job description; every system in a run gets exactly this object."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: str = Field(
        "tiny",
        description="A random shape (tiny, llama-1b, qwen3-1.7b, ...: `loraswitch models`) or a local HF model directory.",
    )
    batch_size: int = Field(4, gt=0)
    seq_len: int = Field(2048, gt=1)
    accumulation_steps: int = Field(4, gt=0)
    steps: int = Field(5, gt=0, description="Timed optimizer steps.")
    warmup_steps: int = Field(
        2, ge=0, description="Optimizer steps run before the timing starts (compilation, autotuning)."
    )
    lora_r: int = Field(16, gt=0)
    lora_alpha: float = Field(32, gt=0, description="As in the reference measurement (alpha = 2r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    dropout_masks: Literal["portable", "framework"] = Field(
        "portable",
        description="The backends' dropout masks: portable (the core's hash, the same on every backend) or "
        "framework (each framework's RNG). hf-reference always uses peft's.",
    )
    gradient_checkpointing: Literal["auto", "off", "full", "dots"] = Field(
        "auto",
        description="The config key, for every system: auto lets each loraswitch backend choose (its describe() "
        "says what it chose) and runs hf-* without; off/full/dots run every system, hf-* included, so.",
    )
    lora_target_modules: tuple[str, ...] = Field(tuple(DEFAULT_TARGET_MODULES), min_length=1)
    learning_rate: float = Field(2e-4, gt=0, description="Constant learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: int = Field(
        0,
        ge=0,
        description="Seeds the synthetic tokens and the LoRA init (random:<shape> base weights are always those of seed 0).",
    )
    peak_flops: float = Field(
        H200_BF16_PEAK_FLOPS, gt=0, description="Device peak FLOP/s that MFU is measured against."
    )
    lengths: str | None = Field(
        None,
        description="Real-length mode: example lengths lognormal:MEDIAN:SIGMA:MIN:MAX (e.g. lognormal:400:0.9:32:2048); "
        "hf systems pad each micro-batch to its longest example, backends pack (core/bench/lengths.py).",
    )

    @model_validator(mode="after")
    def _seq_fits(self) -> BenchSettings:
        if self.lengths is not None:
            from loraswitch.core.bench.lengths import parse_lengths

            try:
                parse_lengths(self.lengths)
            except ValueError as e:
                raise ValueError(f"--lengths {self.lengths!r}: {e}") from None
        max_pos = model_config_of(self.shape).get("max_position_embeddings")
        if isinstance(max_pos, int) and self.seq_len > max_pos:
            raise ValueError(f"--seq_len {self.seq_len} exceeds the model's max_position_embeddings ({max_pos})")
        return self

    @property
    def model(self) -> str:
        """The model string a backend resolves (``random:<shape>`` or the directory)."""
        return f"random:{self.shape}" if self.shape in SHAPES else str(Path(self.shape).expanduser().resolve())

    @property
    def micro_batches(self) -> int:
        return (self.warmup_steps + self.steps) * self.accumulation_steps

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def targets_per_window(self) -> int:
        """Every position but the first of each row is a target (labels = input_ids)."""
        return self.accumulation_steps * self.batch_size * (self.seq_len - 1)


def make_settings(values: dict[str, Any]) -> BenchSettings:
    """Validate once, turning the first problem into one line naming the option and the rule."""
    try:
        return BenchSettings(**values)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if key:
            raise UserError(f"bench: --{key} = {err.get('input')!r}: {msg}") from None
        raise UserError(f"bench: {msg}") from None


def model_config_of(shape: str) -> dict[str, Any]:
    """The HF config dict of a shape name or a model directory (checked, weights included)."""
    if shape in SHAPES:
        return shape_config(shape)
    path = Path(shape).expanduser()
    if not path.is_dir():
        raise UserError(
            f"bench: --shape {shape!r} is neither a random shape ({', '.join(SHAPES)}) nor a model directory"
        )
    from loraswitch.core.models.model_dir import read_config, validate_model_dir

    validate_model_dir(path)
    return read_config(path)


def resolve_precision(settings: BenchSettings) -> BenchSettings:
    """Fix ``auto`` once, in the parent, so every worker is told the same precision.
    A CUDA device visible to this process means bf16 (as the backends' own ``auto``), else fp32."""
    if settings.precision != "auto":
        return settings
    return settings.model_copy(update={"precision": "bf16" if gpu_visible() else "fp32"})


def gpu_visible() -> bool:
    """Is an NVIDIA GPU usable, decided without importing a framework (the runner stays light)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


# ---------------------------------------------------------------- data


def synthetic_tokens(settings: BenchSettings, vocab_size: int) -> np.ndarray:
    """int32 [micro_batches, batch, seq] uniform random token ids, the same in every process:
    micro-batch i draws from its own stream (seed, i), so the data does not depend on the order
    anybody reads it in. Labels are the inputs (every position a target), as in the reference."""
    shape = (settings.batch_size, settings.seq_len)
    return np.stack(
        [
            np.random.default_rng([settings.seed, i]).integers(0, vocab_size, shape, dtype=np.int32)
            for i in range(settings.micro_batches)
        ]
    )


# ---------------------------------------------------------------- FLOPs


def matmul_params(config: dict[str, Any]) -> int:
    """Weights that take part in a matrix product per token: the 7 projections of every layer
    plus the lm_head (counted even when tied to the embedding: the product is still done)."""
    d, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d // heads
    per_layer = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d + 3 * d * f
    return layers * per_layer + d * config["vocab_size"]


def flops_per_token(config: dict[str, Any], seq_len: int) -> int:
    """Training FLOPs per token with frozen base weights: forward 2N plus the activation gradient
    2N (no weight gradient for frozen weights), plus attention scores 12·layers·(heads·head_dim)·seq
    (heads·head_dim is the hidden size for Llama; Qwen3-0.6B's is twice it)."""
    heads = config["num_attention_heads"]
    width = heads * (config.get("head_dim") or config["hidden_size"] // heads)
    return 4 * matmul_params(config) + 12 * config["num_hidden_layers"] * width * seq_len

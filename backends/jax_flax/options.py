"""Performance switches of the jax backend, chosen per platform, overridable from the environment.

They change speed and memory, never the loss (beyond bf16 rounding), so they are not config keys:

  LORASWITCH_JAX_ATTENTION   auto | cudnn | xla      (auto: cudnn on GPU with bf16, else xla; a
                             row of odd length takes xla: cuDNN's training kernels refuse it)
  LORASWITCH_JAX_REMAT       auto | none | dots | dots+fused | full | names:a,b   overrides the
                             config's gradient_checkpointing for experiments: rematerialisation
                             of each layer in the backward pass (names: save only these
                             checkpoint_name'd values: qkv, attn_out, mlp_hidden). auto: from the
                             config (off -> none, full -> full, dots -> dots+fused). dots alone
                             does not see the fused products (LORASWITCH_JAX_FUSE) and recomputes
                             them in backward; dots+fused saves them too (llama-1b on an H200:
                             58.9k -> 64.4k tokens/s, docs/bench/NOTES.md)
  LORASWITCH_JAX_LOSS_CHUNK  tokens per lm_head + cross-entropy chunk (default 4096); the fp32
                             logits of only one chunk exist at a time
  LORASWITCH_JAX_PRNG        PRNG for LoRA dropout: threefry2x32 | rbg | unsafe_rbg
                             (auto: rbg on GPU/TPU, where threefry is slow; threefry on CPU)
  LORASWITCH_JAX_FUSE        on | off (default on): projections that read the same input (q,k,v;
                             gate,up) and each LoRA B product run as one matrix product
                             (lora.fused_projections); off: one product per linear and per B
  LORASWITCH_JAX_PACKED_ATTENTION  auto | cudnn | xla   the kernel of packed batches
                             (packing: true; model.Attention._attend_segments): cudnn takes the
                             same-segment mask as an additive bias; auto: what
                             LORASWITCH_JAX_ATTENTION chose. xla is the exact fallback if cuDNN
                             refuses the bias on some GPU (not yet run on one: docs/packing.md)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from loraswitch.core.errors import UserError

REMAT_NAMES = ("qkv", "attn_out", "mlp_hidden")


@dataclass(frozen=True)
class Options:
    dtype: str = "float32"  # compute dtype of activations and base weights: float32 | bfloat16
    attention: str = "xla"  # xla | cudnn
    remat: str = "none"
    loss_chunk: int = 4096
    prng: str = "threefry2x32"
    fuse: bool = True
    packed_attention: str = "xla"  # xla | cudnn: the kernel of packed batches


def _env(name: str, default: str, allowed: tuple[str, ...] | None = None) -> str:
    value = os.environ.get(name, default).strip() or default
    if allowed is not None and value not in allowed:
        raise UserError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value


REMAT_OF_CHECKPOINTING = {"off": "none", "full": "full", "dots": "dots+fused"}


def choose_options(platform: str, precision: str, head_dim: int = 64, checkpointing: str = "off") -> Options:
    """``platform`` is jax's ("cpu", "gpu", "tpu"); ``precision`` the config value auto|fp32|bf16;
    ``checkpointing`` the resolved gradient_checkpointing policy (off | full | dots)."""
    accelerator = platform in ("gpu", "cuda", "rocm", "tpu")
    if precision == "auto":
        precision = "bf16" if accelerator else "fp32"
    dtype = "bfloat16" if precision == "bf16" else "float32"
    attention = _env("LORASWITCH_JAX_ATTENTION", "auto", ("auto", "cudnn", "xla"))
    if attention == "auto":
        # cuDNN's flash attention takes bf16/fp16 with a head dim that is a multiple of 8, <= 128
        # on every GPU generation (256 from Hopper on; 128 keeps the choice hardware-independent).
        cudnn_ok = platform in ("gpu", "cuda") and dtype == "bfloat16" and head_dim % 8 == 0 and head_dim <= 128
        attention = "cudnn" if cudnn_ok else "xla"
    remat = _env("LORASWITCH_JAX_REMAT", "auto")
    if remat == "auto":
        remat = REMAT_OF_CHECKPOINTING[checkpointing]
    if remat not in ("none", "dots", "dots+fused", "full") and not remat.startswith("names:"):
        raise UserError(
            f"LORASWITCH_JAX_REMAT={remat!r}: expected auto, none, dots, dots+fused, full or names:{','.join(REMAT_NAMES)}"
        )
    for name in remat.removeprefix("names:").split(",") if remat.startswith("names:") else ():
        if name not in REMAT_NAMES:
            raise UserError(f"LORASWITCH_JAX_REMAT: unknown name {name!r}; names: {', '.join(REMAT_NAMES)}")
    chunk = _env("LORASWITCH_JAX_LOSS_CHUNK", "4096")
    if not chunk.isdigit() or int(chunk) <= 0:
        raise UserError(f"LORASWITCH_JAX_LOSS_CHUNK={chunk!r}: expected a positive integer")
    prng = _env("LORASWITCH_JAX_PRNG", "auto", ("auto", "threefry2x32", "rbg", "unsafe_rbg"))
    if prng == "auto":
        prng = "rbg" if accelerator else "threefry2x32"
    fuse = _env("LORASWITCH_JAX_FUSE", "on", ("on", "off")) == "on"
    packed = _env("LORASWITCH_JAX_PACKED_ATTENTION", "auto", ("auto", "cudnn", "xla"))
    return Options(
        dtype=dtype,
        attention=attention,
        remat=remat,
        loss_chunk=int(chunk),
        prng=prng,
        fuse=fuse,
        packed_attention=attention if packed == "auto" else packed,
    )

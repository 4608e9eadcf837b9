"""One system, one process: load, warm up, time, print one JSON result line.

    python -m loraswitch.core.bench.worker --system torch --settings '{"shape": "tiny", ...}'

A fresh process per system keeps frameworks from sharing a device, an allocator or a compile
cache with each other, so no system is measured in another's shadow. The parent (``runner``)
reads the line that starts with ``RESULT_MARKER``; everything else on stdout/stderr is the log.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

import numpy as np

from loraswitch.core.bench.protocol import HF_SYSTEMS, BenchSettings, synthetic_tokens
from loraswitch.core.data.batching import padding_fraction

RESULT_MARKER = "LORASWITCH_BENCH_RESULT "


class BackendSystem:
    """Drives a registered backend through the Backend protocol, exactly as the engine would:
    MicroStep objects with weight = 1 / targets in the window, the update at the window's end.
    ``windows`` holds each step's micro-batches (windows_of: full synthetic rows, or the packed
    rows of real-length mode)."""

    def __init__(
        self,
        name: str,
        settings: BenchSettings,
        source: Any,
        windows: list[list[Any]],
        mesh: dict[str, int] | None = None,
    ):
        from loraswitch.core.types import MicroStep

        self.name, self.settings, self.source, self.mesh = name, settings, source, mesh
        self.batches = windows
        self.micros = []
        for step, batches in enumerate(windows):
            weight = 1.0 / max(1, sum(b.n_targets for b in batches))
            self.micros.append(
                [
                    MicroStep(
                        batch=b,
                        weight=weight,
                        apply_update=j == len(batches) - 1,
                        lr=settings.learning_rate,
                        step=step,
                        micro=j,
                        window_size=len(batches),
                    )
                    for j, b in enumerate(batches)
                ]
            )

    def load(self) -> None:
        from loraswitch.core.config import validate
        from loraswitch.core.plugins import create_backend

        s = self.settings
        packing = s.lengths is not None  # real-length mode: the backends train on packed rows
        config = validate(
            {
                "backend": self.name,
                "model": s.model,
                "lora_r": s.lora_r,
                "lora_alpha": s.lora_alpha,
                "lora_dropout": s.lora_dropout,
                "dropout_masks": s.dropout_masks,
                "lora_target_modules": list(s.lora_target_modules),
                "precision": s.precision,
                "seed": s.seed,
                "learning_rate_multiplier": s.learning_rate,
                "weight_decay": s.weight_decay,
                "batch_size": s.batch_size,
                "accumulation_steps": s.accumulation_steps,
                "max_seq_len": s.seq_len,
                "packing": packing,
                "mesh": self.mesh,
                "gradient_checkpointing": s.gradient_checkpointing,
            },
            origin="bench",
        )
        self.backend = create_backend(self.name)
        self.backend.load(self.source, config, train=True)

    def window(self, step: int) -> list[Any]:
        return [self.backend.micro_step(m) for m in self.micros[step]]

    @staticmethod
    def window_loss(values: list[Any]) -> float:
        """micro_step returns weight * loss_sum, so the window's token mean is their sum."""
        return sum(float(v) for v in values)

    def sync(self) -> None:
        """float() of the last loss already waited for it; also drain the device queues the
        backend's framework may still hold (an update dispatched after that loss)."""
        if "torch" in sys.modules:
            torch = sys.modules["torch"]
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
        if "jax" in sys.modules:
            sys.modules["jax"].effects_barrier()

    def describe(self) -> dict[str, Any]:
        info = dict(self.backend.describe())
        info.setdefault("device_type", _device_type(info.get("device")))
        return info


def _device_type(device: Any) -> str:
    text = str(device or "").lower()
    return "gpu" if any(k in text for k in ("cuda", "gpu", "nvidia", "h100", "h200")) else "cpu"


class DeviceMemory:
    """Peak device memory, read from whichever framework the system used.
    torch can reset its peak after warm-up; JAX cannot, so its peak includes warm-up and loading
    (reported as such, never adjusted)."""

    def __init__(self) -> None:
        self.kind = None
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            self.kind, self.torch = "torch", torch
        elif "jax" in sys.modules:
            jax = sys.modules["jax"]
            dev = jax.devices()[0]
            if dev.platform == "gpu" and dev.memory_stats():
                self.kind, self.dev = "jax", dev

    def reset(self) -> None:
        if self.kind == "torch":
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int | None:
        if self.kind == "torch":
            return int(self.torch.cuda.max_memory_allocated())
        if self.kind == "jax":
            return int(self.dev.memory_stats().get("peak_bytes_in_use", 0)) or None
        return None

    @property
    def includes_warmup(self) -> bool:
        return self.kind == "jax"


def measure(system: Any, settings: BenchSettings, *, warmup_only: bool = False) -> dict[str, Any]:
    """The protocol: load; warm-up steps (timed separately: compilation lives here); reset the
    peak; timed steps with no host sync until one float() of the last loss at the end.
    ``warmup_only`` stops after the warm-up (a warm-cache rerun measures only that)."""
    t = time.perf_counter()
    system.load()
    load_s = time.perf_counter() - t

    values: list[list[Any]] = []
    t = time.perf_counter()
    for step in range(settings.warmup_steps):
        values.append(system.window(step))
    if values:
        float(values[-1][-1])
        system.sync()
    warmup_s = time.perf_counter() - t
    if warmup_only:
        return {"status": "ok", "load_s": load_s, "warmup_s": warmup_s}

    memory = DeviceMemory()
    memory.reset()
    first = settings.warmup_steps
    t = time.perf_counter()
    for step in range(first, first + settings.steps):
        values.append(system.window(step))
    float(values[-1][-1])
    system.sync()
    timed_s = time.perf_counter() - t

    losses = [system.window_loss(v) for v in values]
    timed = [b for w in system.batches[first : first + settings.steps] for b in w]
    tokens = sum(b.input_ids.size for b in timed)  # every slot a system computes, pad included
    targets = sum(b.n_targets for b in timed)  # real target tokens: the same for every system
    return {
        "status": "ok",
        "load_s": load_s,
        "warmup_s": warmup_s,
        "timed_s": timed_s,
        "tokens": tokens,
        "tokens_per_s": tokens / timed_s,
        "target_tokens": targets,
        "target_tokens_per_s": targets / timed_s,
        "padding_fraction": padding_fraction(timed),
        "steps_per_s": settings.steps / timed_s,
        "peak_memory_bytes": memory.peak(),
        "peak_memory_includes_warmup": memory.includes_warmup,
        "peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "loss": losses[-1],
        "losses": losses,
        "info": system.describe(),
    }


def build_system(name: str, settings: BenchSettings, mesh: dict[str, int] | None = None) -> Any:
    from loraswitch.core.bench.protocol import model_config_of
    from loraswitch.core.models.sources import resolve_model

    source = resolve_model(settings.model)
    windows = windows_of(settings, model_config_of(settings.shape)["vocab_size"], padded=name in HF_SYSTEMS)
    if name in HF_SYSTEMS:
        from loraswitch.backends.torch_peft.hf_reference import HFReference

        return HFReference(settings, source, windows, name)
    return BackendSystem(name, settings, source, windows, mesh)


def windows_of(settings: BenchSettings, vocab_size: int, *, padded: bool) -> list[list[Any]]:
    """Each step's micro-batches (core Batch objects). Synthetic mode: A full [B, seq_len] rows
    of random tokens, every position a target, for every system. Real-length mode (``lengths``):
    the same examples in each step for every system, padded per micro-batch for hf systems
    (``padded``), packed into A full micro-batches for the backends (core/bench/lengths.py)."""
    from loraswitch.core.types import Batch

    if settings.lengths is not None:
        from loraswitch.core.bench import lengths

        steps = lengths.step_examples(settings, vocab_size)
        return lengths.padded_windows(settings, steps) if padded else lengths.packed_windows(settings, steps)
    tokens = synthetic_tokens(settings, vocab_size)
    ones = np.ones(tokens.shape[1:], np.int32)
    batches = [Batch(input_ids=t, attention_mask=ones, labels=t) for t in tokens]
    accum = settings.accumulation_steps
    return [batches[i : i + accum] for i in range(0, len(batches), accum)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraswitch.core.bench.worker")
    parser.add_argument("--system", required=True)
    parser.add_argument("--settings", required=True, help="BenchSettings as JSON")
    parser.add_argument("--warmup_only", action="store_true", help="stop after the warm-up steps")
    parser.add_argument("--devices", type=int, default=1, help="scaling mode: devices this run trains on")
    parser.add_argument("--mesh", choices=("data", "fsdp"), default="data", help="scaling mode: the mesh axis")
    args = parser.parse_args(argv)
    try:
        settings = BenchSettings.model_validate_json(args.settings)
        mesh = {args.mesh: args.devices} if args.devices > 1 else None
        result = measure(build_system(args.system, settings, mesh), settings, warmup_only=args.warmup_only)
    except BaseException as e:  # report every failure (OOM, compile error) as a result, then the traceback
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}".strip()[:2000]}
    result["system"] = args.system
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one result line: the main process's
        print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())

"""Scaling mode of ``loraswitch bench``: the same per-device work on 1 and N devices.

    loraswitch bench --shape llama-1b --systems torch,jax --devices 1,2            # data parallel
    loraswitch bench --shape llama-8b --systems torch,jax --devices 2 --mesh fsdp  # sharded base weights

``--batch_size`` is then per device: a run on N devices trains N x batch_size rows per
micro-batch, so a perfectly scaling system reaches N times the single-device tokens/s (scaling
efficiency = tokens/s on N / (N x tokens/s on 1)). Every run is still its own process (torch:
``torchrun --nproc_per_node N``, one process per device; jax: one process that sees N devices),
started here with exactly the devices it may use: ``CUDA_VISIBLE_DEVICES`` on a GPU machine,
``--xla_force_host_platform_device_count`` for jax and gloo processes for torch on a CPU.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from loraswitch.core.bench.protocol import HF_SYSTEMS, BenchSettings, gpu_visible
from loraswitch.core.errors import UserError

MESH_AXES = ("data", "fsdp")
TORCH_SYSTEMS = ("torch",)  # backends launched as one process per device (torchrun)


def parse_devices(text: str) -> tuple[int, ...]:
    """``1,2`` -> (1, 2): device counts, each positive, ascending, no repeats."""
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"bench: --devices {text!r}: expected device counts such as 1,2") from None
    if not counts or any(n <= 0 for n in counts) or list(counts) != sorted(set(counts)):
        raise UserError(f"bench: --devices {text!r}: expected ascending positive device counts such as 1,2")
    return counts


def settings_for(settings: BenchSettings, devices: int) -> BenchSettings:
    """The same per-device micro-batch on ``devices`` devices (batch_size is per device here)."""
    return settings.model_copy(update={"batch_size": settings.batch_size * devices})


def mesh_for(axis: str, devices: int) -> dict[str, int] | None:
    return None if devices == 1 else {axis: devices}


def unsupported(system: str, devices: int) -> str | None:
    """Why ``system`` cannot run on ``devices`` devices here, or None."""
    if devices > 1 and system in HF_SYSTEMS:
        return "single-device only (plain transformers + peft)"
    return None


def launch(system: str, devices: int, worker_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command and extra environment that start one worker on ``devices`` devices."""
    env: dict[str, str] = {}
    if gpu_visible():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(devices)]
        if len(ids) < devices:
            raise UserError(f"bench: --devices {devices}: CUDA_VISIBLE_DEVICES={visible} shows fewer devices")
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:devices])
    elif system not in TORCH_SYSTEMS:
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    worker = ["-m", "loraswitch.core.bench.worker", *worker_args]
    if system in TORCH_SYSTEMS and devices > 1:
        torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}"]
        return [sys.executable, *torchrun, *worker], env
    return [sys.executable, *worker], env


def derive_scaling(results: list[dict[str, Any]]) -> None:
    """Scaling efficiency of every N-device run against the same system's 1-device run."""
    single = {r["system"]: r for r in results if r.get("devices", 1) == 1 and r["status"] == "ok"}
    for r in results:
        if r["status"] != "ok":
            continue
        n = r.get("devices", 1)
        r["tokens_per_s_per_device"] = r["tokens_per_s"] / n
        base = single.get(r["system"])
        r["scaling_efficiency"] = r["tokens_per_s"] / (n * base["tokens_per_s"]) if base else None

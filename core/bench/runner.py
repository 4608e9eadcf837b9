"""Run every system of one bench invocation, each in its own process, and collect the results.

The parent never imports a framework: it validates the settings once, starts
``python -m loraswitch.core.bench.worker`` per system with that one settings JSON, keeps each
worker's log, and reads back one result line. Derived figures (MFU, ratio to hf-reference,
loss difference) are computed here, the same way for everybody.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from loraswitch.core.bench import scaling
from loraswitch.core.bench.protocol import (
    HF_COMPILE,
    HF_LIGER,
    HF_REFERENCE,
    HF_SYSTEMS,
    BenchSettings,
    flops_per_token,
    matmul_params,
    model_config_of,
)
from loraswitch.core.bench.worker import RESULT_MARKER
from loraswitch.core.errors import UserError
from loraswitch.core.models.cache import COMPILE_CACHE_VARIABLES

# Losses of systems that start from independently drawn LoRA weights and dropout masks, in bf16,
# agree to about 1% after a few steps; a larger gap means a system computes a different loss.
LOSS_REL_TOLERANCE = 0.02
OPTIONAL_SYSTEMS = (HF_LIGER,)
ENV_PREFIXES = ("LORASWITCH_", "XLA_", "JAX_", "TF_", "PYTORCH_", "TORCH", "CUDA_VISIBLE_DEVICES", "NVIDIA_TF32")


def available_systems() -> dict[str, str | None]:
    """Every system name -> None when it can run here, else why not (the install hint)."""
    from loraswitch.core.plugins import get_backends

    systems: dict[str, str | None] = {
        name: _missing_reason(("torch", "transformers", "peft", *extra), "torch") for name, extra in HF_SYSTEMS.items()
    }
    for name, info in get_backends().items():
        systems[name] = f"needs {', '.join(info.missing)}: {info.install_hint}" if info.missing else None
    return systems


def _missing_reason(modules: tuple[str, ...], extra: str) -> str | None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"needs {', '.join(missing)}: pip install 'loraswitch[{extra}]'" if missing else None


def parse_systems(text: str | None, known: dict[str, str | None]) -> list[str]:
    """``torch,jax,hf-reference`` -> names, checked. None means every known system.
    A per-system setting (``torch:compile=false``) is refused: all systems share one settings."""
    if not text:  # every system, but an optional peer only where it is installed
        return [n for n in known if n not in OPTIONAL_SYSTEMS or known[n] is None]
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if any(c in n for c in ":=@"):
            raise UserError(
                f"bench: --systems {n!r}: per-system settings are not allowed; every system runs the same settings"
            )
        if n not in known:
            raise UserError(f"bench: --systems: unknown system {n!r}; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise UserError(f"bench: --systems {text!r} names a system twice")
    if not names:
        raise UserError("bench: --systems is empty")
    return names


def run_worker(
    system: str,
    settings: BenchSettings,
    log_path: Path,
    timeout_s: float | None,
    *,
    compile_cache: Path | None = None,
    warmup_only: bool = False,
    devices: int = 1,
    mesh_axis: str = "data",
) -> dict[str, Any]:
    """Start one worker on ``devices`` devices (scaling.py), log its output to ``log_path``,
    return its result line. Its compiled programs go to ``compile_cache`` (torch inductor's and
    jax's persistent caches)."""
    worker_args = ["--system", system, "--settings", settings.model_dump_json()]
    worker_args += ["--warmup_only"] if warmup_only else []
    worker_args += ["--devices", str(devices), "--mesh", mesh_axis] if devices > 1 else []
    cmd, extra_env = scaling.launch(system, devices, worker_args)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra_env)
    if compile_cache is not None:
        env.update({var: str(compile_cache / fw) for fw, var in COMPILE_CACHE_VARIABLES.items()})
    t = time.perf_counter()
    # stdout and stderr go straight to the log, so a long GPU run can be watched while it runs.
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = None
    wall_s = time.perf_counter() - t
    lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.startswith(RESULT_MARKER)]
    if lines:
        result = json.loads(lines[-1][len(RESULT_MARKER) :])
    elif rc is None:
        result = {"status": "failed", "error": f"timed out after {timeout_s:.0f} s"}
    else:
        result = {"status": "failed", "error": f"worker exited with code {rc} without a result: {_tail(log_path)}"}
    result.update(system=system, devices=devices, process_wall_s=wall_s, log=log_path.name)
    return result


def _tail(path: Path, n: int = 3) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-600:]


def derive(results: list[dict[str, Any]], settings: BenchSettings) -> None:
    """Add MFU, ratio and loss difference against hf-reference to each successful result."""
    fpt = flops_per_token(model_config_of(settings.shape), settings.seq_len)
    ref = next((r for r in results if r["system"] == HF_REFERENCE and r["status"] == "ok"), None)
    peer = next((r for r in results if r["system"] == HF_COMPILE and r["status"] == "ok"), None)
    for r in results:
        if r["status"] != "ok":
            continue
        on_gpu = r["info"].get("device_type") == "gpu"
        # MFU against a GPU's peak means nothing for a CPU run; a scaling row's peak is its devices' sum.
        r["mfu"] = r["tokens_per_s"] * fpt / (settings.peak_flops * r.get("devices", 1)) if on_gpu else None
        r["loss_finite"] = math.isfinite(r["loss"])
        same_as_peer = peer is not None and _same_job(r, peer)
        r["ratio_to_hf_compile"] = _speed(r, settings) / _speed(peer, settings) if peer and same_as_peer else None
        if ref is None or not _same_job(r, ref):
            r["ratio_to_hf_reference"] = r["loss_rel_diff_to_hf_reference"] = r["loss_matches_hf_reference"] = None
            continue
        r["ratio_to_hf_reference"] = _speed(r, settings) / _speed(ref, settings)
        if r["loss_finite"] and math.isfinite(ref["loss"]):
            rel = abs(r["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-12)
            r["loss_rel_diff_to_hf_reference"] = rel
            r["loss_matches_hf_reference"] = rel <= LOSS_REL_TOLERANCE
        else:
            r["loss_rel_diff_to_hf_reference"] = None
            r["loss_matches_hf_reference"] = None


def _speed(r: dict[str, Any], settings: BenchSettings) -> float:
    """What ratios compare: tokens/s, or in real-length mode real target tokens/s (systems lay
    the same examples out with different amounts of padding, which must not count as work)."""
    if settings.lengths is not None:
        return float(r["target_tokens_per_s"])
    return float(r["tokens_per_s"])


def _same_job(r: dict[str, Any], ref: dict[str, Any]) -> bool:
    """Systems are only compared when they ran on the same kind and number of devices in the
    same precision (scaling runs are compared by their scaling efficiency instead)."""
    keys = ("device_type", "precision")
    return r.get("devices", 1) == ref.get("devices", 1) and all(r["info"].get(k) == ref["info"].get(k) for k in keys)


def mismatches(results: list[dict[str, Any]]) -> list[str]:
    """Human-readable problems that make the comparison unfair (reported, never hidden)."""
    ok = [r for r in results if r["status"] == "ok"]
    out = []
    for key in ("device_type", "precision"):
        seen = {r["system"]: r["info"].get(key) for r in ok}
        if len(set(map(str, seen.values()))) > 1:
            out.append(f"systems ran with different {key}: " + ", ".join(f"{s}={v}" for s, v in seen.items()))
    return out


def machine_facts(command: list[str]) -> dict[str, Any]:
    """What a reader needs to reproduce or judge the numbers, gathered without importing a framework."""

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": {
            d: version(d)
            for d in ("loraswitch", "torch", "transformers", "peft", "jax", "jaxlib", "flax", "optax", "numpy")
        },
        "command": command,
        # Backend performance switches (LORASWITCH_JAX_REMAT, XLA_FLAGS, ...) change the numbers
        # without being settings, so the report keeps them beside the command line.
        "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)},
        "gpu": None,
        "driver": None,
    }
    try:
        out = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            .stdout.strip()
            .splitlines()
        )
        if out:
            name, driver, mem = (x.strip() for x in out[0].split(","))
            facts.update(gpu=name, driver=driver, gpu_memory=mem, gpu_count=len(out))
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return facts


def _run_system(
    name: str,
    label: str,
    settings: BenchSettings,
    out_dir: Path,
    timeout_s: float | None,
    warm_rerun: bool,
    devices: int,
    mesh_axis: str,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """One system on an empty compile cache, and once more on the filled one with ``warm_rerun``."""
    progress(f"{label}: running")
    cache = out_dir / "compile-cache" / label
    shutil.rmtree(cache, ignore_errors=True)

    def start(log: Path, warmup_only: bool) -> dict[str, Any]:
        return run_worker(
            name,
            settings,
            log,
            timeout_s,
            compile_cache=cache,
            warmup_only=warmup_only,
            devices=devices,
            mesh_axis=mesh_axis,
        )

    r = start(out_dir / f"worker-{label}.log", False)
    if warm_rerun and r["status"] == "ok":
        progress(f"{label}: warm start")
        warm = start(out_dir / f"worker-{label}-warm.log", True)
        r["warmup_warm_s"] = warm.get("warmup_s") if warm["status"] == "ok" else None
    ok = f", {r['tokens_per_s']:,.0f} tokens/s, loss {r['loss']:.4f}" if r["status"] == "ok" else f" ({r['error']})"
    progress(f"{label}: {r['status']}{ok}")
    return r


MODEL_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "tie_word_embeddings",
)


def _model_facts(settings: BenchSettings, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": settings.model,
        "matmul_params": matmul_params(config),
        "flops_per_token": flops_per_token(config, settings.seq_len),
        **{k: config.get(k) for k in MODEL_KEYS},
    }


def run_bench(
    settings: BenchSettings,
    systems: list[str],
    out_dir: Path,
    *,
    command: list[str],
    timeout_s: float | None = None,
    skipped: dict[str, str] | None = None,
    progress: Callable[[str], None] = lambda msg: None,
    warm_rerun: bool = False,
    devices: tuple[int, ...] | None = None,
    mesh_axis: str = "data",
) -> dict[str, Any]:
    """Run ``systems`` one after the other and return the report dict (also what results.json holds).

    Every system starts with an empty compile cache, so ``warm-up s`` is a cold start whatever
    ran on this machine before; with ``warm_rerun`` each system is started once more on the cache
    its first run filled and that warm-up is reported too (``warmup_warm_s``). With ``devices``
    (scaling mode, scaling.py) every system runs once per device count, batch_size per device."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model_config_of(settings.shape)
    results: list[dict[str, Any]] = []
    for name in systems:
        for n in devices or (1,):
            label = name if devices is None else f"{name}-x{n}"
            why = (skipped or {}).get(name) or (scaling.unsupported(name, n) if devices else None)
            if why:
                results.append({"system": name, "devices": n, "status": "skipped", "error": why})
                progress(f"{label}: skipped ({why})")
                continue
            job = scaling.settings_for(settings, n) if devices else settings
            r = _run_system(name, label, job, out_dir, timeout_s, warm_rerun, n, mesh_axis, progress)
            results.append(r)
    derive(results, settings)
    if devices:
        scaling.derive_scaling(results)
    return {
        "settings": settings.model_dump(mode="json"),
        "model": _model_facts(settings, config),
        "machine": machine_facts(command),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "problems": mismatches(results),
        "scaling": {"devices": list(devices), "mesh": mesh_axis} if devices else None,
        "systems": results,
    }

"""Time the same LoRA training job on every backend and on plain transformers + peft
(hf-reference), each in its own process, and report tokens/s, steps/s, peak memory, warm-up time,
MFU and the loss each reached (table, results.json, results.md, chart.png).

    loraswitch bench --shape tiny
    loraswitch bench --shape llama-1b --systems torch,jax,hf-reference --out bench-results/1b
    loraswitch bench --shape llama-1b --lengths lognormal:400:0.9:32:2048   # real-length examples
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from loraswitch.core.bench.protocol import BenchSettings, make_settings, resolve_precision

HELP = "time LoRA training on each backend and on plain transformers + peft, same job for all"
# Options that map one-to-one onto BenchSettings fields (the names are the field names).
SETTING_OPTIONS = (
    "shape",
    "batch_size",
    "seq_len",
    "accumulation_steps",
    "steps",
    "warmup_steps",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "dropout_masks",
    "gradient_checkpointing",
    "learning_rate",
    "weight_decay",
    "precision",
    "seed",
    "lengths",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fields = BenchSettings.model_fields
    for name in SETTING_OPTIONS:
        f = fields[name]
        kind = f.annotation if f.annotation in (int, float) else str  # the settings model validates the rest
        parser.add_argument(
            f"--{name}", type=kind, default=None, help=f"{f.description or ''} (default: {f.default})".strip()
        )
    parser.add_argument(
        "--lora_target_modules",
        default=None,
        help="comma-separated (default: all-linear, the block's linears)",
    )
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="device peak TFLOP/s for MFU (default: 790, bf16 matmul measured on an H200)",
    )
    parser.add_argument(
        "--systems", default=None, help="comma-separated: backends and/or hf-reference (default: all registered ones)"
    )
    parser.add_argument("--out", default=None, help="report directory (default: bench-results/<timestamp>)")
    parser.add_argument("--timeout_s", type=float, default=3600, help="give up on a system after this long")
    parser.add_argument(
        "--devices",
        default=None,
        help="scaling mode: device counts such as 1,2; each system runs on each count, --batch_size per device",
    )
    parser.add_argument(
        "--mesh",
        choices=("data", "fsdp"),
        default="data",
        help="scaling mode: data parallel or base weights sharded over the devices (default: data)",
    )
    parser.add_argument(
        "--warm_rerun",
        action="store_true",
        help="start each system once more on the compile cache its first run filled; report that warm-up too",
    )


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    values = {k: getattr(args, k) for k in SETTING_OPTIONS if getattr(args, k) is not None}
    if args.lora_target_modules:
        values["lora_target_modules"] = tuple(m.strip() for m in args.lora_target_modules.split(",") if m.strip())
    if args.peak_tflops is not None:
        values["peak_flops"] = args.peak_tflops * 1e12
    return resolve_precision(make_settings(values))


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 when every chosen system trained, 1 when one failed (the report says why)."""
    from rich.console import Console

    from loraswitch.core.bench import report as report_mod
    from loraswitch.core.bench.runner import available_systems, parse_systems, run_bench
    from loraswitch.core.bench.scaling import parse_devices

    console = Console(stderr=True)
    settings = settings_from_args(args)
    known = available_systems()
    systems = parse_systems(args.systems, known)
    skipped = {n: known[n] for n in systems if known[n]}
    out = Path(args.out) if args.out else Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
    command = _command_line(args)
    report = run_bench(
        settings,
        systems,
        out,
        command=command,
        timeout_s=args.timeout_s,
        skipped=skipped,
        progress=lambda msg: console.print(msg, style="dim"),
        warm_rerun=args.warm_rerun,
        devices=parse_devices(args.devices) if args.devices else None,
        mesh_axis=args.mesh,
    )
    paths = report_mod.write(report, out)
    stdout = Console()
    if not stdout.is_terminal:  # a log file or CI: do not squeeze the table into 80 columns
        stdout = Console(width=160)
    report_mod.print_table(report, stdout)
    console.print(f"report: {paths['json']}, {paths['markdown']}, {paths['chart']}")
    return 1 if any(r["status"] == "failed" for r in report["systems"]) else 0


def _command_line(args: argparse.Namespace) -> list[str]:
    """The invocation for the report: as typed when run from a shell, else (called in-process,
    e.g. from tests) rebuilt from the parsed options, which reproduces the same run."""
    if "bench" in sys.argv[1:]:
        return ["loraswitch", *sys.argv[sys.argv.index("bench") :]]
    line = ["loraswitch", "bench"]
    for name in (*SETTING_OPTIONS, "lora_target_modules", "peak_tflops", "systems", "out", "timeout_s"):
        value = getattr(args, name, None)
        if value is not None:
            line += [f"--{name}", str(value)]
    if getattr(args, "warm_rerun", False):
        line.append("--warm_rerun")
    if getattr(args, "devices", None):
        line += ["--devices", args.devices, "--mesh", args.mesh]
    return line

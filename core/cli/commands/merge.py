"""Merge an adapter into its base model: a Hugging Face directory transformers and vLLM load.

  loraswitch merge runs/quickstart --out runs/quickstart-merged
  loraswitch merge --adapter my_adapter --model path/to/base --out merged --dtype bf16

Every targeted linear layer becomes W + scale * B @ A (scale = lora_alpha / r, or / sqrt(r)
with rsLoRA), computed in float32 one block at a time, so memory stays bounded for any size.
The output holds config.json, sharded safetensors with model.safetensors.index.json, the
tokenizer files and chat template, and generation_config.json when the base has one. The base
is checked against the fingerprint the adapter recorded (--force to merge anyway).
"""

from __future__ import annotations

HELP = "merge an adapter into its base: a Hugging Face model directory (numpy, any size)"


def add_arguments(p) -> None:
    from loraswitch.core.cli.commands._export_inputs import add_input_arguments

    add_input_arguments(p)
    p.add_argument(
        "--dtype", choices=("bf16", "f16", "f32"), metavar="{bf16,f16,f32}", help="weights' dtype (default: the base's)"
    )
    p.add_argument(
        "--max_shard_size",
        default="5GB",
        metavar="SIZE",
        help="largest safetensors shard, e.g. 5GB or 500MB (default: 5GB)",
    )
    p.set_defaults(_command="merge")


def parse_size(text: str) -> int:
    from loraswitch.core.errors import UserError

    units = {"GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    upper = text.strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit):
            try:
                value = float(upper[: -len(unit)])
            except ValueError:
                break
            if value > 0:
                return int(value * factor)
    raise UserError(f"--max_shard_size {text!r}: expected a size such as 5GB, 500MB or 100KB")


def run(args) -> int:
    import time
    from pathlib import Path

    from loraswitch.core.cli.commands._export_inputs import read_adapter, resolve_inputs
    from loraswitch.core.export.merge import MergePlan, write_merged_model
    from loraswitch.core.export.outputs import check_target

    max_shard = parse_size(args.max_shard_size)
    out = Path(args.out).expanduser().absolute()
    check_target(out, overwrite=args.overwrite, kind="directory")
    inputs = resolve_inputs(args)
    assert inputs.adapter_dir is not None
    adapter = read_adapter(inputs.adapter_dir)
    plan = MergePlan(inputs.base_dir, adapter, args.dtype)  # every shape checked before anything is written
    inputs.warn()
    t0 = time.perf_counter()
    provenance = {"base": inputs.base_label, "base_fingerprint": inputs.fingerprint}
    write_merged_model(plan, out, provenance=provenance, max_shard_bytes=max_shard)
    merged = sum(p.lora is not None for p in plan.tensors)
    print(
        f"merged {merged} LoRA layers (scale {adapter.scale:g}) into {inputs.base_label}: "
        f"{out} ({len(plan.tensors)} tensors, {time.perf_counter() - t0:.1f} s)"
    )
    return 0

"""Export a model for llama.cpp, Ollama and LM Studio: GGUF files, written with the gguf package.

  loraswitch export runs/quickstart --format gguf --out quickstart.gguf             # merged model
  loraswitch export runs/quickstart --format gguf --out quickstart-q8.gguf --dtype q8_0
  loraswitch export runs/quickstart --format gguf-lora --out quickstart-lora.gguf   # adapter alone (--lora)
  loraswitch export --model path/to/hf_dir --format gguf --out model.gguf           # a model as it is

--format gguf merges the adapter (as `loraswitch merge` does, without writing the directory)
and writes one GGUF with the metadata llama.cpp needs. --format gguf-lora writes the adapter
alone, as llama.cpp's convert_lora_to_gguf.py does, for `llama-cli -m base.gguf --lora FILE`
or an Ollama ADAPTER line. Supported: Llama, Mistral, Qwen2 and Qwen3 (docs/export.md).
"""

from __future__ import annotations

HELP = "export a merged model (gguf) or the adapter alone (gguf-lora) for llama.cpp/Ollama"
FORMATS = ("gguf", "gguf-lora")


def add_arguments(p) -> None:
    from loraswitch.core.cli.commands._export_inputs import add_input_arguments

    add_input_arguments(p)
    p.add_argument("--format", required=True, choices=FORMATS, metavar="{gguf,gguf-lora}")
    p.add_argument(
        "--dtype",
        default=None,
        choices=("f32", "f16", "bf16", "q8_0"),
        metavar="{f32,f16,bf16,q8_0}",
        help="tensor type (gguf default f16, as llama.cpp's converter; gguf-lora default f32)",
    )
    p.add_argument("--name", metavar="TEXT", help="general.name in the GGUF (default: the output file's stem)")
    p.set_defaults(_command="export")


def run(args) -> int:
    import time
    from pathlib import Path

    from loraswitch.core.cli.commands._export_inputs import read_adapter, require_gguf, resolve_inputs
    from loraswitch.core.errors import UserError
    from loraswitch.core.export.outputs import check_target

    require_gguf()
    from loraswitch.core.export import gguf_export
    from loraswitch.core.export.merge import MergePlan

    lora = args.format == "gguf-lora"
    dtype = args.dtype or ("f32" if lora else "f16")
    allowed = gguf_export.LORA_DTYPES if lora else gguf_export.GGUF_DTYPES
    if dtype not in allowed:
        raise UserError(
            f"--dtype {dtype}: not available for --format {args.format}; choose one of {', '.join(allowed)}"
        )
    out = Path(args.out).expanduser().absolute()
    check_target(out, overwrite=args.overwrite, kind="file")
    inputs = resolve_inputs(args, adapter_required=lora)
    adapter = read_adapter(inputs.adapter_dir) if inputs.adapter_dir is not None else None
    plan = MergePlan(inputs.base_dir, adapter)  # every shape checked before anything is written
    t0 = time.perf_counter()
    write = gguf_export.export_gguf_lora if lora else gguf_export.export_gguf
    n = write(plan, out, dtype, args.name or out.stem, before_write=inputs.warn)
    what = "adapter" if lora else ("merged model" if adapter else "model")
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({what}, {n} tensors, {dtype}, {size:,.1f} MB, {time.perf_counter() - t0:.1f} s)")
    return 0

"""The quickstart: fine-tune a real instruction model on a bundled task and show the difference.

  loraswitch quickstart                      # examples/quickstart.yaml, default backend (torch)
  loraswitch quickstart --backend jax
  loraswitch quickstart --n_steps 10         # any config key as --KEY VALUE

It measures the base model's exact match on the held-out file and two sample answers, trains
(progress bar, eval, run directory with loss.png), then measures the adapter the same way, writes
both into RUN_DIR/quickstart.json and the sample answers into RUN_DIR/samples.json, and ends with
the run's HTML report, RUN_DIR/report.html (`loraswitch report`).
"""

from __future__ import annotations

from loraswitch.core.training.generation import DEFAULT_BATCH_SIZE

HELP = "fine-tune the built-in model on the bundled task and compare before/after"
TAKES_OVERRIDES = True
DEFAULT_CONFIG = "examples/quickstart.yaml"
DEFAULT_HELDOUT = "examples/quickstart/heldout.jsonl"
N_SAMPLES = 2  # sample answers shown before and after


def add_arguments(p) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE", help=f"default: {DEFAULT_CONFIG}")
    p.add_argument(
        "--heldout",
        default=DEFAULT_HELDOUT,
        metavar="FILE",
        help=f"held-out chat JSONL for the exact-match metric (default: {DEFAULT_HELDOUT})",
    )
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=24,
        metavar="N",
        help="generation budget per answer (the answers are ~15 tokens)",
    )
    p.add_argument(
        "--generate_batch_size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"held-out prompts generated together (default {DEFAULT_BATCH_SIZE}; 1: one at a time)",
    )
    p.epilog = "Any config key can be given as --KEY VALUE; the run is overwritten if it exists."


def run(args) -> int:
    import time
    from pathlib import Path

    from loraswitch.core.cli.commands._inference import load_for_inference
    from loraswitch.core.config import resolve
    from loraswitch.core.data.sources import read_records
    from loraswitch.core.files.atomic import atomic_write_json
    from loraswitch.core.plugins import check_trackers
    from loraswitch.core.report import write_report
    from loraswitch.core.rundir import names
    from loraswitch.core.training.engine import train
    from loraswitch.core.training.stopping import StopReason

    _check_batch_size(args.generate_batch_size)
    config = resolve(args.config, args.overrides)
    check_trackers(config.report_to)  # before minutes of measuring, not after
    heldout = read_records(args.heldout, config.data_format, config.data_fields)
    t0 = time.perf_counter()
    backend, tokenizer, _ = load_for_inference(
        model=config.model, backend_name=config.backend, adapter=None, extra=_lora_keys(config)
    )
    # LoRA B starts at zero, so the freshly loaded model is exactly the base model.
    before = _measure(backend, tokenizer, heldout, args)
    _report("before (base model)", before)

    summary = train(config, overwrite=True)
    if summary["stop_reason"] in (StopReason.NON_FINITE_LOSS, StopReason.INTERRUPTED):
        print(f"quickstart: training stopped ({summary['stop_reason']}); see {config.output_dir}")
        return 1
    backend.load_adapter(Path(config.output_dir) / "adapter")
    after = _measure(backend, tokenizer, heldout, args)
    _report("after (with the adapter)", after)

    result = {
        "backend": config.backend,
        "model": config.model,
        "heldout": args.heldout,
        "exact_match_before": before["exact_match"],
        "exact_match_after": after["exact_match"],
        "heldout_eval_s_before": before["seconds"],
        "heldout_eval_s_after": after["seconds"],
        "generate_batch_size": args.generate_batch_size,
        "samples_before": before["samples"],
        "samples_after": after["samples"],
        "train_steps": summary["steps"],
        "final_eval_loss": summary.get("final_eval_loss"),
        "total_s": round(time.perf_counter() - t0, 1),
    }
    run_dir = Path(config.output_dir)
    atomic_write_json(run_dir / names.QUICKSTART, result)
    atomic_write_json(run_dir / names.SAMPLES, _samples(args, before, after))
    report = write_report([run_dir])
    print(
        f"\nexact match on {args.heldout}: {before['exact_match']:.1%} before -> {after['exact_match']:.1%} after "
        f"({config.backend} backend, {result['total_s']:.0f} s in all); run directory: {config.output_dir}"
    )
    print(f"report: {report}")
    print(next_steps(str(config.output_dir)))
    return 0


def _check_batch_size(n: int) -> None:
    from loraswitch.core.errors import UserError

    if n <= 0:
        raise UserError(f"--generate_batch_size {n}: must be a positive integer")


def _samples(args, before: dict, after: dict) -> dict:
    """samples.json: the same prompts answered by the base model and with the adapter (the report shows them)."""
    return {
        "heldout": args.heldout,
        "max_new_tokens": args.max_new_tokens,
        "exact_match_before": before["exact_match"],
        "exact_match_after": after["exact_match"],
        "before": before["samples"],
        "after": after["samples"],
    }


def next_steps(run_dir: str) -> str:
    """The two commands that turn the run into a model other runtimes load (README "Merge and export")."""
    stem = run_dir.rstrip("/")
    return (
        "\nmerge and export the adapter (docs/export.md):\n"
        f"  loraswitch merge {run_dir} --out {stem}-merged                     # transformers, vLLM\n"
        f"  loraswitch export {run_dir} --format gguf --out {stem}.gguf        # llama.cpp, Ollama"
    )


def _lora_keys(config) -> dict:
    keys = (
        "lora_r",
        "lora_alpha",
        "lora_target_modules",
        "use_rslora",
        "precision",
        "seed",
        "max_seq_len",
        "chat_template_kwargs",  # the held-out prompts are rendered as training renders them
    )
    return {k: getattr(config, k) for k in keys}


def _measure(backend, tokenizer, records, args) -> dict:
    """Exact match on the held-out records, two sample answers and the seconds it took."""
    import time

    from loraswitch.core.errors import UserError
    from loraswitch.core.training.evaluation import exact_match

    samples: list[dict] = []
    t0 = time.perf_counter()
    measured = exact_match(
        backend,
        tokenizer,
        records,
        max_new_tokens=args.max_new_tokens,
        samples=samples,
        n_samples=N_SAMPLES,
        batch_size=args.generate_batch_size,
    )
    if measured is None:
        raise UserError(f"{args.heldout}: no record has a prompt and a reference answer to measure")
    return {"exact_match": measured[0], "samples": samples, "seconds": round(time.perf_counter() - t0, 2)}


def _report(title: str, measured: dict) -> None:
    print(f"\n== {title}: exact match {measured['exact_match']:.1%} ({measured['seconds']:.1f} s)")
    for s in measured["samples"]:
        print(f"  prompt:    {s['prompt']!r}\n  answer:    {s['answer']!r}\n  reference: {s['reference']!r}")

"""Evaluate an adapter: token-mean loss over target tokens and, for chat and prompt/completion
records, metrics of greedy generations against the reference answers (exact_match, json_valid,
token_f1 and any a plugin registers through ``register_metrics``).

  loraswitch evaluate runs/run                     # the run's validation split
  loraswitch evaluate runs/run --metrics exact_match,token_f1
  loraswitch evaluate --adapter runs/run/adapter --data test.jsonl --model random:tiny --backend numpy

With RUN_DIR, every generated example (prompt, prediction, reference, each metric) is written to
RUN_DIR/evaluation.jsonl and the result to RUN_DIR/evaluation.json, atomically; ``--out FILE``
writes the examples elsewhere (or, with --adapter, at all). Answers are generated in batches
(``--generate_batch_size``), equal to one-at-a-time greedy generation.
"""

from __future__ import annotations

from loraswitch.core.cli.commands._inference import add_template_kwargs_argument
from loraswitch.core.training.generation import DEFAULT_BATCH_SIZE

HELP = "loss and answer metrics of an adapter on a run's validation split or a data file"


def add_arguments(p) -> None:
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run directory (its validation split)")
    p.add_argument("--adapter", metavar="DIR", help="PEFT adapter directory (instead of RUN_DIR)")
    p.add_argument(
        "--data",
        metavar="SOURCE",
        help="data to evaluate on, any source `data` accepts (with --adapter, or instead of the run's split)",
    )
    p.add_argument("--data_format", metavar="SHAPE", help="record shape of --data (default: the run's, else auto)")
    p.add_argument(
        "--data_fields", metavar="MAPPING", help="key mapping of --data, e.g. '{prompt: question, completion: answer}'"
    )
    p.add_argument("--model", metavar="SOURCE")
    p.add_argument("--backend", metavar="NAME")
    p.add_argument("--max_new_tokens", type=int, default=64, metavar="N", help="generation budget per answer")
    p.add_argument(
        "--generate_batch_size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N", help="prompts generated together"
    )
    p.add_argument("--metrics", metavar="A,B", help="comma-separated metric names (default: every registered one)")
    p.add_argument("--out", metavar="FILE", help="write the per-example results here (JSONL)")
    p.add_argument("--no_generate", action="store_true", help="loss only, skip generation and metrics")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_template_kwargs_argument(p)


def run(args) -> int:
    import json

    from loraswitch.core.cli.commands._inference import load_for_inference, template_kwargs_option
    from loraswitch.core.training.metrics import choose_metrics

    _check_args(args)
    metrics = None if args.no_generate else choose_metrics(_names(args.metrics))
    backend, tokenizer, config = load_for_inference(
        model=args.model,
        backend_name=args.backend,
        adapter=args.run_dir or args.adapter,
        extra={**template_kwargs_option(args.chat_template_kwargs), **_reading_options(args)},
    )
    records = _records(config, args.data)
    result = _loss(backend, tokenizer, config, records, args.data)
    if metrics is not None:
        result.update(_generation_metrics(args, backend, tokenizer, records, metrics))
    if args.json:
        print(json.dumps(result))
    else:
        line = f"loss {result['loss']:.4f} over {result['target_tokens']} target tokens ({result['examples']} examples)"
        if result.get("metrics"):
            scores = ", ".join(f"{k} {v:.1%}" for k, v in result["metrics"].items())
            line += f"; {scores} of {result['generated_examples']} answers"
        print(line)
    return 0


def _check_args(args) -> None:
    from loraswitch.core.errors import UserError

    if (args.run_dir is None) == (args.adapter is None):
        raise UserError("evaluate: give either RUN_DIR or --adapter DIR --data FILE")
    if args.adapter is not None and args.data is None:
        raise UserError("evaluate: --adapter needs --data FILE")
    if args.max_new_tokens <= 0:
        raise UserError(f"--max_new_tokens {args.max_new_tokens}: must be a positive integer")
    if args.generate_batch_size <= 0:
        raise UserError(f"--generate_batch_size {args.generate_batch_size}: must be a positive integer")


def _reading_options(args) -> dict:
    """--data_format / --data_fields as config values (validated with the config)."""
    from loraswitch.core.config import parse_cli_overrides

    flags = [f"--{key}={getattr(args, key)}" for key in ("data_format", "data_fields") if getattr(args, key)]
    return parse_cli_overrides(flags)


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def _loss(backend, tokenizer, config, records, data: str | None) -> dict:
    from loraswitch.core.errors import UserError
    from loraswitch.core.training.evaluation import eval_loss

    examples = []
    for record in records:
        example, _ = tokenizer.encode_record(record, config.max_seq_len)
        if example.n_targets:
            examples.append(example)
    if not examples:
        raise UserError(f"{data or config.data}: no record has a target token within max_seq_len {config.max_seq_len}")
    loss, n_tokens = eval_loss(
        backend, examples, batch_size=config.batch_size, pad_id=tokenizer.pad_id, max_len=config.max_seq_len
    )
    return {"loss": loss, "target_tokens": n_tokens, "examples": len(examples)}


def _generation_metrics(args, backend, tokenizer, records, metrics) -> dict:
    """Answers, their metrics (means in the result, per example in the JSONL) and the files."""
    from pathlib import Path

    from loraswitch.core.files.atomic import atomic_write_json, atomic_write_text
    from loraswitch.core.rundir import names
    from loraswitch.core.training.evaluation import generate_answers, score_answers

    rows = generate_answers(
        backend, tokenizer, records, max_new_tokens=args.max_new_tokens, batch_size=args.generate_batch_size
    )
    means = score_answers(rows, metrics)
    out: dict = {"generated_examples": len(rows), "metrics": means}
    if "exact_match" in means:  # the keys evaluate has always printed
        out["exact_match"], out["exact_match_examples"] = means["exact_match"], len(rows)
    examples_file = args.out or (str(Path(args.run_dir) / names.EVALUATION_EXAMPLES) if args.run_dir else None)
    if examples_file:
        atomic_write_text(examples_file, "".join(_json_line(r) for r in rows))
        out["examples_file"] = examples_file
    if args.run_dir:
        atomic_write_json(Path(args.run_dir) / names.EVALUATION, {"data": args.data, **out})
    return out


def _json_line(row: dict) -> str:
    import json

    return json.dumps(row, ensure_ascii=False) + "\n"


def _records(config, data: str | None):
    """The records to evaluate: a given source, or the run's validation split (the same split
    the run trained with: same data, seed and training_split)."""
    from loraswitch.core.data.dataset import read_config_records, split_indices

    if data is not None:
        return read_config_records(config, data)
    if config.validation_data:
        return read_config_records(config, config.validation_data)
    records = read_config_records(config, config.data)
    _, val_idx = split_indices(len(records), config.training_split, config.seed)
    return [records[i] for i in val_idx]

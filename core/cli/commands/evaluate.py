"""Evaluate an adapter: token-mean loss over target tokens and, for chat and prompt/completion
records, the exact-match rate of greedy generations against the reference answers.

  loraswitch evaluate runs/run                     # the run's validation split
  loraswitch evaluate --adapter runs/run/adapter --data test.jsonl --model random:tiny --backend numpy
"""

from __future__ import annotations

from loraswitch.core.cli.commands._inference import add_template_kwargs_argument

HELP = "loss and exact-match of an adapter on a run's validation split or a JSONL file"


def add_arguments(p) -> None:
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run directory (its validation split)")
    p.add_argument("--adapter", metavar="DIR", help="PEFT adapter directory (instead of RUN_DIR)")
    p.add_argument(
        "--data", metavar="FILE", help="JSONL to evaluate on (with --adapter, or to replace the run's split)"
    )
    p.add_argument("--model", metavar="SOURCE")
    p.add_argument("--backend", metavar="NAME")
    p.add_argument("--max_new_tokens", type=int, default=64, metavar="N", help="generation budget for exact-match")
    p.add_argument("--no_generate", action="store_true", help="loss only, skip exact-match")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_template_kwargs_argument(p)


def run(args) -> int:
    import json

    from loraswitch.core.cli.commands._inference import load_for_inference, template_kwargs_option
    from loraswitch.core.errors import UserError
    from loraswitch.core.training.evaluation import eval_loss, exact_match

    if (args.run_dir is None) == (args.adapter is None):
        raise UserError("evaluate: give either RUN_DIR or --adapter DIR --data FILE")
    if args.adapter is not None and args.data is None:
        raise UserError("evaluate: --adapter needs --data FILE")
    if args.max_new_tokens <= 0:
        raise UserError(f"--max_new_tokens {args.max_new_tokens}: must be a positive integer")
    backend, tokenizer, config = load_for_inference(
        model=args.model,
        backend_name=args.backend,
        adapter=args.run_dir or args.adapter,
        extra=template_kwargs_option(args.chat_template_kwargs),
    )
    records = _records(config, args.data)
    examples = []
    for record in records:
        example, _ = tokenizer.encode_record(record, config.max_seq_len)
        if example.n_targets:
            examples.append(example)
    if not examples:
        raise UserError(
            f"{args.data or config.data}: no record has a target token within max_seq_len {config.max_seq_len}"
        )
    loss, n_tokens = eval_loss(
        backend, examples, batch_size=config.batch_size, pad_id=tokenizer.pad_id, max_len=config.max_seq_len
    )
    result = {"loss": loss, "target_tokens": n_tokens, "examples": len(examples)}
    if not args.no_generate:
        em = exact_match(backend, tokenizer, records, max_new_tokens=args.max_new_tokens)
        if em is not None:
            result["exact_match"], result["exact_match_examples"] = em
    if args.json:
        print(json.dumps(result))
    else:
        line = f"loss {loss:.4f} over {n_tokens} target tokens ({len(examples)} examples)"
        if "exact_match" in result:
            line += f"; exact match {result['exact_match']:.1%} of {result['exact_match_examples']}"
        print(line)
    return 0


def _records(config, data: str | None):
    """The records to evaluate: a given file, or the run's validation split (the same split
    the run trained with: same file, seed and training_split)."""
    from loraswitch.core.data.dataset import read_config_records, split_indices

    if data is not None:
        return read_config_records(config, data)
    if config.validation_data:
        return read_config_records(config, config.validation_data)
    records = read_config_records(config, config.data)
    _, val_idx = split_indices(len(records), config.training_split, config.seed)
    return [records[i] for i in val_idx]

"""Generate text from a model, with or without a trained adapter.

  loraswitch generate --model random:tiny --backend numpy "Hello"
  loraswitch generate --adapter runs/run "What is 2+2?"        # a run directory: its model and backend
  loraswitch generate --model path/to/hf_dir --adapter my_adapter --temperature 0.7 "Tell me a joke"

The prompt becomes one user turn of the model's chat template (plain text if it has none).
"""

from __future__ import annotations

from loraswitch.core.cli.commands._inference import add_template_kwargs_argument

HELP = "generate text from a model and optional adapter"


def add_arguments(p) -> None:
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument(
        "--model",
        metavar="SOURCE",
        help="directory, builtin:NAME or random:SHAPE (default: the run's, else the config default)",
    )
    p.add_argument("--adapter", metavar="DIR", help="PEFT adapter directory or run directory")
    p.add_argument("--backend", metavar="NAME", help="backend (default: the run's, else torch)")
    p.add_argument("--max_new_tokens", type=int, default=128, metavar="N")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy")
    p.add_argument("--top_p", type=float, default=1.0, metavar="P")
    p.add_argument("--seed", type=int, default=0)
    add_template_kwargs_argument(p)


def run(args) -> int:
    from loraswitch.core.cli.commands._inference import load_for_inference, template_kwargs_option
    from loraswitch.core.errors import UserError

    if args.max_new_tokens <= 0:
        raise UserError(f"--max_new_tokens {args.max_new_tokens}: must be a positive integer")
    if args.temperature < 0:
        raise UserError(f"--temperature {args.temperature}: must be >= 0")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top_p {args.top_p}: must be in (0, 1]")
    backend, tokenizer, _ = load_for_inference(
        model=args.model,
        backend_name=args.backend,
        adapter=args.adapter,
        extra=template_kwargs_option(args.chat_template_kwargs),
    )
    prompt_ids = tokenizer.encode_prompt(args.prompt)
    new_ids = backend.generate(
        prompt_ids,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop_ids=tokenizer.eos_ids,
    )
    print(tokenizer.decode(new_ids))
    return 0

"""Train a LoRA adapter.

  loraswitch train config.yaml                          # a new run in output_dir
  loraswitch train config.yaml --lora_r 8 --n_steps 50  # any config key as --KEY VALUE
  loraswitch train --resume runs/run                    # continue from its latest checkpoint
  loraswitch train --resume runs/run --n_steps 1000     # ... with a larger step budget
  loraswitch train --resume runs/run --resume_from step-000200   # ... from an older checkpoint, when
                                                        # the newest is damaged (newer ones are set aside)

Exit codes: 0 finished (n_steps, n_epochs or stop_eval_loss), 1 non-finite loss (the last good
checkpoint is kept), 2 bad input, 130/143 interrupted by SIGINT/SIGTERM (checkpoint written).
"""

from __future__ import annotations

import sys

HELP = "train a LoRA adapter (a new run, or --resume RUN_DIR)"
TAKES_OVERRIDES = True


def add_arguments(p) -> None:
    p.add_argument("config", nargs="?", metavar="CONFIG", help="YAML or TOML config file")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its latest complete checkpoint")
    p.add_argument(
        "--resume_from",
        metavar="CHECKPOINT",
        help="with --resume: continue from this checkpoint (step-NNNNNN) instead of the newest; "
        "newer ones are renamed to checkpoints/set-aside-step-NNNNNN",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the run already in output_dir")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.epilog = "Any config key can be given as --KEY VALUE (see `loraswitch config`)."


def run(args) -> int:
    from loraswitch.core.config import env_overrides, read_config_file, resolve
    from loraswitch.core.errors import UserError
    from loraswitch.core.training.engine import resume_config, train
    from loraswitch.core.training.interrupt import EXIT_CODES
    from loraswitch.core.training.parallel import is_main_process
    from loraswitch.core.training.stopping import StopReason

    if not is_main_process():  # under torchrun: one process speaks for the run
        args.quiet = True
    if args.resume:
        if args.overwrite:
            raise UserError("--resume and --overwrite contradict each other; choose one")
        values = read_config_file(args.config) if args.config else {}
        values.update(env_overrides())
        values.update(args.overrides)
        config = resume_config(args.resume, values, quiet=args.quiet)
        summary = train(config, resume=True, resume_from=args.resume_from, quiet=args.quiet)
    else:
        if args.resume_from:
            raise UserError("--resume_from needs --resume RUN_DIR")
        config = resolve(args.config, args.overrides)
        summary = train(config, overwrite=args.overwrite, quiet=args.quiet)

    reason = summary["stop_reason"]
    run_dir = config.output_dir
    if reason == StopReason.NON_FINITE_LOSS:
        kept = (
            f"the last good checkpoint (step {summary['adapter_step']}) is kept and copied to {run_dir}/adapter"
            if summary.get("adapter_step") is not None
            else "no checkpoint had been written yet"
        )
        print(
            f"error: training loss became non-finite ({summary.get('non_finite_value')}) at step "
            f"{summary.get('non_finite_step')}; {kept}; lower learning_rate_multiplier or check the data",
            file=sys.stderr,
        )
        return 1
    if reason == StopReason.INTERRUPTED:
        if not args.quiet:
            where = f"checkpoint at step {summary['steps']}" if summary["steps"] else "no step completed"
            print(
                f"loraswitch: interrupted ({summary.get('signal')}); {where}; continue with: "
                f"loraswitch train --resume {run_dir}",
                file=sys.stderr,
            )
        return EXIT_CODES.get(summary.get("signal") or "SIGINT", 130)
    if not args.quiet:
        loss = summary["final_eval_loss"]
        shown = f"{loss:.4f}" if loss is not None else "n/a"
        print(
            f"loraswitch: stopped by {reason} after {summary['steps']} steps ({summary['epochs']:.2f} epochs), "
            f"eval loss {shown}; adapter in {run_dir}/adapter",
            file=sys.stderr,
        )
    return 0

"""Is packing exact on this machine's attention kernels? Packed against unpacked, per backend and precision.

    python -m loraswitch.core.bench.packing_check --shape llama-1b --precision bf16,fp32
    bash core/bench/scripts/h200_stages.sh OUT 560 packing-exact_DIR      # the same on the H200

The CPU exactness tests (tests/backends/test_packing_exact.py) cover XLA's and SDPA's math
kernels; on a GPU the packed batches take other paths (torch: SDPA with transformers' document
mask; jax: cuDNN with the same-segment mask as a bias), which only a GPU can check. For each
backend and precision this trains one optimizer step on real-length examples (the bench's
``--lengths`` draw) twice from the same initial adapter, once one example per padded row and once
packed, and prints the step's loss (token mean over the window) and the loss of the updated
adapter on the unpacked batches, with their relative differences. Expected: fp32 within ~1e-5,
bf16 within bf16 noise (~1e-2 relative; the two layouts round differently). A kernel that let
packed examples see each other, or kept rope positions running, shows as a difference of several
percent even in fp32. One JSON line per row is also written with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from loraswitch.core.bench import lengths
from loraswitch.core.bench.protocol import BenchSettings, model_config_of
from loraswitch.core.types import MicroStep


def _train_then_eval(
    backend_name: str, settings: BenchSettings, windows: Any, unpacked: Any
) -> tuple[float, float, str]:
    """(window loss of one step on ``windows[0]``, loss of the updated adapter on ``unpacked``,
    the backend's packed attention path)."""
    from loraswitch.core.config import validate
    from loraswitch.core.models.sources import resolve_model
    from loraswitch.core.plugins import create_backend

    config = validate(
        {
            "backend": backend_name,
            "model": settings.model,
            "lora_r": settings.lora_r,
            "lora_alpha": settings.lora_alpha,
            "lora_dropout": 0.0,
            "precision": settings.precision,
            "seed": settings.seed,
            "batch_size": settings.batch_size,
            "max_seq_len": settings.seq_len,
            "learning_rate_multiplier": settings.learning_rate,
        },
        origin="packing_check",
    )
    backend = create_backend(backend_name)
    backend.load(resolve_model(settings.model), config, train=True)
    batches = windows[0]
    weight = 1.0 / sum(b.n_targets for b in batches)
    loss = 0.0
    for j, b in enumerate(batches):
        micro = MicroStep(b, weight, j == len(batches) - 1, settings.learning_rate, 0, j, len(batches))
        loss += float(backend.micro_step(micro))
    total, n = 0.0, 0
    for b in unpacked[0]:
        s, k = backend.eval_loss(b)
        total, n = total + float(s), n + int(k)
    return loss, total / n, str(backend.describe().get("attention_packed"))


def check(backend_name: str, settings: BenchSettings) -> dict[str, Any]:
    vocab = model_config_of(settings.shape)["vocab_size"]
    steps = lengths.step_examples(settings, vocab)
    unpacked, packed = lengths.padded_windows(settings, steps), lengths.packed_windows(settings, steps)
    loss_u, after_u, _ = _train_then_eval(backend_name, settings, unpacked, unpacked)
    loss_p, after_p, path = _train_then_eval(backend_name, settings, packed, unpacked)
    return {
        "backend": backend_name,
        "precision": settings.precision,
        "packed_attention": path,
        "step_loss_unpacked": loss_u,
        "step_loss_packed": loss_p,
        "step_loss_rel_diff": abs(loss_p - loss_u) / abs(loss_u),
        "eval_after_unpacked": after_u,
        "eval_after_packed": after_p,
        "eval_after_rel_diff": abs(after_p - after_u) / abs(after_u),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraswitch.core.bench.packing_check")
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--backends", default="torch,jax")
    parser.add_argument("--precision", default="bf16,fp32", help="comma-separated: bf16, fp32")
    parser.add_argument("--lengths", default="lognormal:400:0.9:32:2048")
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--accumulation_steps", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--json", action="store_true", help="also print one JSON line per row")
    args = parser.parse_args(argv)
    print(
        f"{'backend':8} {'precision':9} {'packed attention':52} {'step loss':>10} {'rel diff':>9} {'after':>10} {'rel diff':>9}"
    )
    for precision in args.precision.split(","):
        settings = BenchSettings(
            shape=args.shape,
            precision=precision.strip(),
            lengths=args.lengths,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            accumulation_steps=args.accumulation_steps,
            learning_rate=args.learning_rate,
            steps=1,
            warmup_steps=0,
            lora_dropout=0.0,
        )
        for name in args.backends.split(","):
            r = check(name.strip(), settings)
            print(
                f"{r['backend']:8} {r['precision']:9} {r['packed_attention']:52} {r['step_loss_packed']:10.6f} "
                f"{r['step_loss_rel_diff']:9.2e} {r['eval_after_packed']:10.6f} {r['eval_after_rel_diff']:9.2e}",
                flush=True,
            )
            if args.json:
                print("PACKING_CHECK " + json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

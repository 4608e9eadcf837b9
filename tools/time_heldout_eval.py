"""Time the quickstart's held-out evaluation of the base model (its "before" measurement: 40
greedy answers of up to 24 tokens from SmolLM2-135M-Instruct), as the quickstart runs it, for
README's before/after-batching numbers:

    .venv/bin/python tools/time_heldout_eval.py --generate_batch_size 1    # one prompt at a time
    .venv/bin/python tools/time_heldout_eval.py --generate_batch_size 16   # the default

Prints one JSON line: batch size, seconds, exact match, a hash of the 40 answers (equal for
every batch size: batching changes the time, not the answers) and the load average at the start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time


def main() -> None:
    from loraswitch.core.cli.commands import quickstart
    from loraswitch.core.cli.commands._inference import load_for_inference
    from loraswitch.core.config import resolve
    from loraswitch.core.data.sources import read_records
    from loraswitch.core.training.evaluation import generate_answers

    parser = argparse.ArgumentParser()
    parser.add_argument("--generate_batch_size", type=int, default=16)
    parser.add_argument("--backend", default=None)
    args = parser.parse_args()
    config = resolve(quickstart.DEFAULT_CONFIG, {"backend": args.backend} if args.backend else {})
    heldout = read_records(quickstart.DEFAULT_HELDOUT)
    backend, tokenizer, _ = load_for_inference(
        model=config.model, backend_name=config.backend, adapter=None, extra=quickstart._lora_keys(config)
    )
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    # what quickstart._measure runs (exact_match is generate_answers plus a comparison)
    rows = generate_answers(backend, tokenizer, heldout, max_new_tokens=24, batch_size=args.generate_batch_size)
    seconds = time.perf_counter() - t0
    answers = "\n".join(r["prediction"] for r in rows)
    print(
        json.dumps(
            {
                "backend": config.backend,
                "generate_batch_size": args.generate_batch_size,
                "seconds": round(seconds, 1),
                "exact_match": sum(r["prediction"] == r["reference"].strip() for r in rows) / len(rows),
                "answers_sha256": hashlib.sha256(answers.encode()).hexdigest()[:16],
                "load_average_1min": load,
            }
        )
    )


if __name__ == "__main__":
    main()

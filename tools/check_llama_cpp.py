"""Opt-in check that llama.cpp itself runs what `loraswitch export` writes (make check-llama-cpp).

    python tools/check_llama_cpp.py RUN_DIR MERGED.gguf BASE.gguf ADAPTER.gguf [HELDOUT.jsonl]

For every held-out prompt, the answer `loraswitch generate --adapter RUN_DIR` gives (greedy,
24 new tokens, the run's backend) is compared with llama.cpp's greedy answer (through
llama-cpp-python) from the merged GGUF, and from the base GGUF with the LoRA GGUF applied
(``lora_path``). Prompts are rendered and tokenized by loraswitch for all three, so the check
compares the models, not two chat-template renderers. Prints the agreement and exits 1 if the
merged GGUF agrees on fewer than 90% of the prompts (f16/f32 rounding may flip a near-tie).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

MAX_NEW_TOKENS = 24
MIN_AGREEMENT = 0.9


def llama_cpp_answer(llm, prompt_ids: list[int], stop_ids: set[int]) -> list[int]:
    llm.reset()
    out: list[int] = []
    for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        if token in stop_ids or len(out) == MAX_NEW_TOKENS:
            break
        out.append(int(token))
    return out


def main(run_dir: str, merged_gguf: str, base_gguf: str, adapter_gguf: str, heldout: str) -> int:
    from llama_cpp import Llama

    from loraswitch.core.cli.commands._inference import load_for_inference
    from loraswitch.core.data.jsonl import read_jsonl
    from loraswitch.core.training.evaluation import reference_pair

    backend, tokenizer, _ = load_for_inference(model=None, backend_name=None, adapter=run_dir)
    merged = Llama(model_path=merged_gguf, n_ctx=512, n_threads=2, verbose=False)
    lora = Llama(model_path=base_gguf, lora_path=adapter_gguf, n_ctx=512, n_threads=2, verbose=False)
    stop = set(tokenizer.eos_ids)
    rows, t0 = [], time.perf_counter()
    for record in read_jsonl(heldout):
        pair = reference_pair(record)  # the prompt messages, as `loraswitch evaluate` renders them
        if pair is None:
            continue
        ids = [int(i) for i in tokenizer.encode_prompt(pair[0], tools=record.tools)]
        ours = [
            int(i)
            for i in backend.generate(
                ids, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, top_p=1.0, seed=0, stop_ids=stop
            )
        ]
        ours = [i for i in ours if i not in stop]
        answers = {
            "loraswitch": ours,
            "merged": llama_cpp_answer(merged, ids, stop),
            "lora": llama_cpp_answer(lora, ids, stop),
        }
        rows.append({k: tokenizer.decode(v) for k, v in answers.items()})
    n = len(rows)
    agree = {k: sum(r[k] == r["loraswitch"] for r in rows) / n for k in ("merged", "lora")}
    print(json.dumps({"prompts": n, "agreement": agree, "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    for r in rows:
        if r["merged"] != r["loraswitch"] or r["lora"] != r["loraswitch"]:
            print(json.dumps(r))
    return 0 if agree["merged"] >= MIN_AGREEMENT else 1


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 4:
        args.append(str(Path(__file__).resolve().parents[1] / "examples/quickstart/heldout.jsonl"))
    sys.exit(main(*args))

"""Each data format trains end to end: a small file of that format and shape, written here, runs
two steps on the numpy backend (the cheapest), with the split, the examples count and the data
fingerprint recorded in the run directory as for JSONL."""

from __future__ import annotations

import json

import pytest
from helpers.data_sources import put_in_datasets_cache, write_source

pytestmark = pytest.mark.usefixtures("isolated_env")

N = 12
QA = [{"question": f"{i}+{i}=", "answer": str(2 * i)} for i in range(N)]
CASES = {
    "jsonl-messages": (
        "jsonl",
        [
            {"messages": [{"role": "user", "content": q["question"]}, {"role": "assistant", "content": q["answer"]}]}
            for q in QA
        ],
        {},
    ),
    "json-sharegpt": (
        "json",
        [
            {"conversations": [{"from": "human", "value": q["question"]}, {"from": "gpt", "value": q["answer"]}]}
            for q in QA
        ],
        {},
    ),
    "parquet-alpaca": (
        "parquet",
        [{"instruction": "Add.", "input": q["question"], "output": q["answer"]} for q in QA],
        {},
    ),
    "csv-data-fields": ("csv", QA, {"data_fields": {"prompt": "question", "completion": "answer"}}),
    "saved-text": ("saved", [{"text": q["question"] + q["answer"]} for q in QA], {"data_format": "text"}),
    "hf-prompt-completion": ("hf", [{"prompt": q["question"], "completion": q["answer"]} for q in QA], {}),
    "jsonl-tool-calls": (
        "jsonl",
        [
            {
                "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
                "messages": [
                    {"role": "user", "content": q["question"]},
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "add", "arguments": json.dumps({"x": i})}}],
                    },
                    {"role": "tool", "content": q["answer"]},
                    {"role": "assistant", "content": q["answer"]},
                ],
            }
            for i, q in enumerate(QA)
        ],
        {"model": "random:tiny-qwen2", "max_seq_len": 1024},  # Qwen2.5 template renders tools
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_format_trains_end_to_end(tmp_path, monkeypatch, case):
    import datasets

    from loraswitch.core.config import resolve
    from loraswitch.core.training.engine import train

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    kind, rows, extra = CASES[case]
    source = write_source(tmp_path, kind, rows) if kind != "hf" else put_in_datasets_cache(tmp_path, "me/qa", rows)
    values = dict(
        backend="numpy",
        model="random:tiny",
        n_steps=2,
        batch_size=2,
        lora_r=2,
        eval_every=2,
        save_every=2,
        max_seq_len=256,
        data=source,
        output_dir=str(tmp_path / "run"),
    )
    summary = train(resolve(None, {**values, **extra}, environ={}), quiet=True)
    assert summary["steps"] == 2
    assert summary["n_train"] + summary["n_validation"] == N and summary["n_validation"] > 0
    state = json.loads(next((tmp_path / "run/checkpoints").iterdir()).joinpath("trainer_state.json").read_text())
    assert len(state["data_sha256"]["data"]) == 64

"""The README's main job, shortened: `loraswitch quickstart` on the built-in SmolLM2 with the
torch backend writes a run whose adapter loads in peft.PeftModel.from_pretrained and gives the
backend's own logits, its sample answers before and after, and its HTML report. (The full-length
quickstart and its metric are measured, not tested: README "Two commands".)"""

import html
import json
from pathlib import Path

import numpy as np
import pytest

from loraswitch.core import plugins
from loraswitch.core.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def quickstart_run(tmp_path, monkeypatch, smollm2_cache, capsys):
    monkeypatch.setenv("LORASWITCH_CACHE", str(smollm2_cache))
    plugins.reset_plugin_manager()
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join((REPO / "examples/quickstart/heldout.jsonl").read_text().splitlines(True)[:2]))
    run_dir = tmp_path / "run"
    code = main(
        [
            "quickstart",
            "--config",
            str(REPO / "examples/quickstart.yaml"),
            "--heldout",
            str(heldout),
            "--max_new_tokens",
            "4",
            "--n_steps",
            "2",
            "--warmup_steps",
            "0",
            "--eval_every",
            "2",
            "--eval_batches",
            "1",
            "--save_every",
            "2",
            "--output_dir",
            str(run_dir),
        ]
    )
    assert code == 0
    assert f"report: {run_dir / 'report.html'}" in capsys.readouterr().out.splitlines()
    yield run_dir
    plugins.reset_plugin_manager()


def test_quickstart_ends_with_the_merge_and_export_commands():
    from loraswitch.core.cli.commands.quickstart import next_steps

    text = next_steps("runs/quickstart")
    assert "loraswitch merge runs/quickstart --out runs/quickstart-merged" in text
    assert "loraswitch export runs/quickstart --format gguf --out runs/quickstart.gguf" in text


def test_quickstart_writes_a_run_whose_adapter_loads_in_peft(quickstart_run, smollm2_cache):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loraswitch.core.cli.commands._inference import load_for_inference
    from loraswitch.core.types import Batch

    result = json.loads((quickstart_run / "quickstart.json").read_text())
    assert result["backend"] == "torch" and result["train_steps"] == 2
    # Every reference is a JSON object longer than the 4-token budget, so no answer can match it,
    # before or after: the rates are exactly 0, and the samples show the 4-token answers.
    assert (result["exact_match_before"], result["exact_match_after"]) == (0.0, 0.0)
    assert len(result["samples_before"]) == len(result["samples_after"]) == 2
    summary = json.loads((quickstart_run / "summary.json").read_text())
    assert summary["stop_reason"] == "n_steps" and (quickstart_run / "loss.png").is_file()
    samples = json.loads((quickstart_run / "samples.json").read_text())
    assert samples["before"] == result["samples_before"] and samples["after"] == result["samples_after"]
    report = (quickstart_run / "report.html").read_text()
    assert "Sample answers" in report and report.count("<svg") == 4
    assert samples["after"][0]["answer"] in html.unescape(report)  # the answer after training, shown

    backend, tokenizer, _ = load_for_inference(model=None, backend_name=None, adapter=str(quickstart_run))
    ids = np.array(
        [tokenizer.encode_prompt("Extract the person and the city as JSON.\nMaria lives in Oslo.")], dtype=np.int32
    )
    batch = Batch(ids, np.ones_like(ids), np.full_like(ids, -100))
    ours = backend.logits(batch)

    base_dir = next((smollm2_cache / "models").glob("builtin-smollm2-135m*"))
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True)
    peft_model = PeftModel.from_pretrained(base, quickstart_run / "adapter").eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.from_numpy(ids).long()).logits.numpy()
    assert np.abs(ours - theirs).max() < 1e-4

"""``loraswitch train`` on Qwen2, Qwen3, Gemma 2, Gemma 3 and Phi-3 directories written by
transformers, on both backends,
end to end: chat records through the family's real template, the adapter in PEFT format with
every linear of the block (the ``all-linear`` default), and the chat template arguments recorded
with it (loraswitch.json) and used again by generate/evaluate."""

from __future__ import annotations

import json

import pytest
from helpers.transformers_models import write_transformers_model

from loraswitch.core.cli import main

pytest.importorskip("jax")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("isolated_env")
BLOCK_LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
PHI3_LINEARS = ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
GEMMA = dict(head_dim=16, sliding_window=8, query_pre_attn_scalar=16)


@pytest.fixture(scope="module")
def qwen_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen")
    return {
        "Qwen2ForCausalLM": write_transformers_model(root / "qwen2", "Qwen2ForCausalLM", seed=0),
        "Qwen3ForCausalLM": write_transformers_model(root / "qwen3", "Qwen3ForCausalLM", seed=0, head_dim=32),
        "Gemma2ForCausalLM": write_transformers_model(root / "gemma2", "Gemma2ForCausalLM", seed=0, **GEMMA),
        "Gemma3ForCausalLM": write_transformers_model(root / "gemma3", "Gemma3ForCausalLM", seed=0, **GEMMA),
        "Phi3ForCausalLM": write_transformers_model(root / "phi3", "Phi3ForCausalLM", seed=0, sliding_window=8),
    }


def write_run(tmp_path, model_dir, backend: str, template_kwargs: str) -> tuple:
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": f"{i}+1?"}, {"role": "assistant", "content": str(i + 1)}]}
            )
            + "\n"
            for i in range(8)
        )
    )
    config = tmp_path / "run.yaml"
    config.write_text(
        f"backend: {backend}\nmodel: {model_dir}\ndata: {data}\noutput_dir: {tmp_path / 'run'}\n"
        "n_steps: 2\nbatch_size: 2\naccumulation_steps: 1\neval_every: 2\nsave_every: 2\nmax_seq_len: 160\n"
        f"lora_r: 4\nlearning_rate_multiplier: 0.01\nprecision: fp32\nchat_template_kwargs: {template_kwargs}\n"
    )
    return config, tmp_path / "run"


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize(
    "architecture",
    ["Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"],
)
def test_train_a_qwen_directory(architecture, backend, qwen_dirs, tmp_path, capsys):
    kwargs = {"enable_thinking": False} if architecture == "Qwen3ForCausalLM" else {}
    config, run = write_run(tmp_path, qwen_dirs[architecture], backend, json.dumps(kwargs))
    assert main(["train", str(config), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["stop_reason"] == "n_steps"
    assert summary["final_eval_loss"] > 0
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == (PHI3_LINEARS if "Phi3" in architecture else BLOCK_LINEARS)
    assert json.loads((run / "adapter" / "loraswitch.json").read_text()) == {"chat_template_kwargs": kwargs}


def test_recorded_template_arguments_reach_generation(qwen_dirs, tmp_path, capsys):
    """A bare adapter directory carries its chat_template_kwargs; an explicit option wins."""
    from loraswitch.core.cli.commands._inference import load_for_inference

    model_dir = qwen_dirs["Qwen3ForCausalLM"]
    config, run = write_run(tmp_path, model_dir, "torch", "{enable_thinking: false}")
    assert main(["train", str(config), "--quiet"]) == 0
    _, tokenizer, _ = load_for_inference(model=str(model_dir), backend_name="torch", adapter=str(run / "adapter"))
    assert tokenizer.decode(tokenizer.encode_prompt("hi"), False).endswith("<think>\n\n</think>\n\n")
    _, tokenizer, _ = load_for_inference(
        model=str(model_dir), backend_name="torch", adapter=str(run), extra={"chat_template_kwargs": {}}
    )
    assert tokenizer.decode(tokenizer.encode_prompt("hi"), False).endswith("<|im_start|>assistant\n")
    capsys.readouterr()
    assert main(["generate", "--adapter", str(run), "--max_new_tokens", "3", "--chat_template_kwargs", "{}", "hi"]) == 0

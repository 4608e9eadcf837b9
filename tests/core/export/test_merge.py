"""`loraswitch merge`: the merged directory computes what base + adapter compute in peft.

Tiny models written by transformers, adapters written by peft; the merged directory is loaded
by transformers' AutoModelForCausalLM and compared with PeftModel.from_pretrained on the base.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.export_models import hf_logits, load_hf, peft_logits, token_ids

from loraswitch.core.errors import UserError
from loraswitch.core.export import shards
from loraswitch.core.export.adapter_source import read_lora_adapter
from loraswitch.core.export.merge import MergePlan, merge_model
from loraswitch.core.export.tensors import SafetensorsDir, from_float32, to_float32


@pytest.mark.parametrize(
    "base, adapter",
    [
        ("llama", "all"),  # untied lm_head, every linear layer
        ("llama-tied", "lm_head"),  # LoRA on a tied lm_head: untied on merge, embeddings unchanged
        ("llama", "rslora"),  # scale alpha / sqrt(r)
        ("qwen2", "all"),  # q/k/v biases, tied embeddings
        ("qwen3", "all"),  # q/k norms, head_dim != hidden / heads
        ("mistral", "all"),
        ("gemma2", "all"),  # soft-caps, sandwich norms, tied embeddings
        ("gemma3", "lm_head"),  # LoRA on Gemma's tied lm_head: untied on merge
        ("phi3", "fused"),  # LoRA on the fused qkv_proj and gate_up_proj
    ],
)
def test_merged_directory_matches_peft_within_1e_5(models, adapters, base, adapter, tmp_path):
    ids = token_ids()
    expected = peft_logits(models(base), adapters(base, adapter), ids)
    merge_model(models(base), read_lora_adapter(adapters(base, adapter)), tmp_path / "merged", max_shard_bytes=40_000)
    merged = load_hf(tmp_path / "merged")
    got = hf_logits(merged, ids)
    assert np.abs(got - expected).max() < 1e-5
    assert np.abs(got - hf_logits(load_hf(models(base)), ids)).max() > 1e-2  # the adapter did change the model
    if adapter == "lm_head":
        assert merged.config.tie_word_embeddings is False
        np.testing.assert_array_equal(  # the embedding lookup is the base's, bit for bit
            merged.model.embed_tokens.weight.detach().numpy(),
            load_hf(models(base)).model.embed_tokens.weight.detach().numpy(),
        )


def test_merged_directory_is_sharded_with_an_index_and_carries_the_side_files(models, adapters, tmp_path):
    base = models("llama")
    merge_model(base, read_lora_adapter(adapters("llama")), tmp_path / "m", max_shard_bytes=60_000)
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    shards_written = [n for n in names if n.endswith(".safetensors")]
    assert len(shards_written) > 2 and shards_written[0] == f"model-00001-of-{len(shards_written):05d}.safetensors"
    for side in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert side in names
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards_written)
    from safetensors.numpy import load_file

    total = 0
    for name in shards_written:
        tensors = load_file(str(tmp_path / "m" / name))  # the library's own reader accepts our streamed files
        assert {index["weight_map"][k] for k in tensors} == {name}
        total += sum(t.nbytes for t in tensors.values())
    assert index["metadata"]["total_size"] == total
    assert json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())["chat_template"]
    record = json.loads((tmp_path / "m" / "loraswitch_merge.json").read_text())
    assert record["scale"] == 2.0 and len(record["merged_modules"]) == 14


def test_bf16_base_merges_in_float32_and_rounds_once(models, adapters, tmp_path):
    """Output in the base's dtype (bf16): each weight is round_to_bf16(W + scale * B @ A),
    the sum in float32, exactly as torch rounds it."""
    import torch

    base = models("llama-bf16")
    adapter = read_lora_adapter(adapters("llama-bf16"))
    merge_model(base, adapter, tmp_path / "m")
    out = SafetensorsDir(tmp_path / "m")
    src = SafetensorsDir(base)
    name = "model.layers.1.mlp.down_proj.weight"
    assert out.entries[name].dtype == "BF16"
    a, b = adapter.modules["model.layers.1.mlp.down_proj"]
    want = torch.from_numpy(to_float32(src.read(name), "BF16") + np.float32(adapter.scale) * (b @ a)).to(torch.bfloat16)
    np.testing.assert_array_equal(out.read(name), want.view(torch.int16).numpy().view(np.uint16))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"


def test_dtype_option_casts_every_float_tensor(models, adapters, tmp_path):
    merge_model(models("llama"), read_lora_adapter(adapters("llama")), tmp_path / "m", dtype="f16")
    out = SafetensorsDir(tmp_path / "m")
    assert {e.dtype for e in out.entries.values()} == {"F16"}
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float16"


def test_bf16_conversion_matches_torch_including_ties_and_specials():
    import torch

    x = np.concatenate(
        [
            np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 100,
            np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 0.0, -0.0, np.inf, -np.inf, 3e38, 1e-40], np.float32),
        ]
    )
    ours = from_float32(x, "BF16")
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(to_float32(ours, "BF16"), torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    assert np.isnan(to_float32(from_float32(np.array([np.nan], np.float32), "BF16"), "BF16")).all()


def test_rows_are_read_in_blocks_without_loading_the_file(models):
    from safetensors.numpy import load_file

    base = models("llama")
    weights = SafetensorsDir(base)
    full = load_file(str(base / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    np.testing.assert_array_equal(weights.rows("model.layers.0.mlp.up_proj.weight", 5, 9), full[5:9])


def test_shard_plan_keeps_order_and_bounds_size():
    ts = [shards.OutTensor(f"t{i}", "F32", (10, 10)) for i in range(5)]  # 400 bytes each
    planned = shards.plan_shards(ts, 1000)
    assert [[t.name for t in s] for s in planned] == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert shards.plan_shards([shards.OutTensor("big", "F32", (100, 100))], 10)[0][0].name == "big"


# ---------------------------------------------------------------- refusals


def test_adapter_that_does_not_fit_the_base_is_refused_before_writing(models, adapters, tmp_path):
    adapter = read_lora_adapter(adapters("qwen3"))  # head_dim 128: q_proj is [512, 64], llama's is [64, 64]
    fit = r"LoRA 'model\.layers\.0\.self_attn\.k_proj' \(lora_B \[256, 4\] x lora_A \[4, 64\]\) does not fit"
    with pytest.raises(UserError, match=fit):
        MergePlan(models("llama"), adapter)
    adapter = read_lora_adapter(adapters("llama"))
    adapter.modules = {"model.layers.9.mlp.down_proj": adapter.modules["model.layers.0.mlp.down_proj"]}
    with pytest.raises(
        UserError, match=r"LoRA module 'model.layers.9.mlp.down_proj' has no base tensor 'model.layers.9"
    ):
        MergePlan(models("llama"), adapter)


def test_unknown_dtype_is_refused():
    with pytest.raises(UserError, match=r"--dtype f8: unknown; choose one of f32, f16, bf16"):
        MergePlan("/nonexistent", None, "f8")


def test_disk_full_mid_write_leaves_nothing_behind(models, adapters, tmp_path, monkeypatch):
    import errno

    calls = []

    def full_disk(f, data):
        calls.append(len(data))
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(data)

    monkeypatch.setattr(shards, "write_bytes", full_disk)
    with pytest.raises(UserError, match=r"cannot write .*/merged \(no space left on device\); nothing was written"):
        merge_model(models("llama"), read_lora_adapter(adapters("llama")), tmp_path / "merged")
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []

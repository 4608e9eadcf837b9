"""`loraswitch export --format gguf / gguf-lora`, proved with readers we did not write.

Every GGUF is read back by the gguf package (GGUFReader) and by transformers
(``from_pretrained(..., gguf_file=...)``), and the Llama ones by our own reader too. Tolerances:
f32 is exact (same weights, same computation: 1e-5 on logits); f16 is compared with the merged
model whose matrices were rounded to f16 the same way (so 1e-5 again, any mis-mapped tensor
shows); q8_0 is checked element by element against its error bound (see test_q8_0_...).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers.export_models import hf_logits, load_hf, token_ids
from transformers import AutoConfig

gguf = pytest.importorskip("gguf")

from loraswitch.core.errors import UserError  # noqa: E402
from loraswitch.core.export.adapter_source import read_lora_adapter  # noqa: E402
from loraswitch.core.export.gguf_export import export_gguf, export_gguf_lora  # noqa: E402
from loraswitch.core.export.gguf_families import permute_qk  # noqa: E402
from loraswitch.core.export.merge import MergePlan, merge_model  # noqa: E402
from loraswitch.core.models.gguf.convert import unpermute_qk  # noqa: E402
from loraswitch.core.models.gguf.reader import GGUFFile  # noqa: E402


@pytest.fixture(scope="module")
def exported(models, adapters, tmp_path_factory):
    """(base variant, dtype) -> (merged directory, GGUF of base + adapter), written once."""
    root = tmp_path_factory.mktemp("gguf")
    made = {}

    def get(base: str, dtype: str = "f32"):
        if (base, dtype) not in made:
            adapter = read_lora_adapter(adapters(base))
            merged = root / f"{base}-merged"
            if not merged.exists():
                merge_model(models(base), adapter, merged)
            path = root / f"{base}-{dtype}.gguf"
            export_gguf(MergePlan(models(base), adapter), path, dtype, f"tiny-{base}")
            made[base, dtype] = (merged, path)
        return made[base, dtype]

    return get


def fields(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def reader_tensors(path) -> dict[str, np.ndarray]:
    reader = gguf.GGUFReader(path)
    return {
        t.name: gguf.dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        for t in reader.tensors
    }


def load_gguf(path, **kw):
    return load_hf(path.parent, gguf_file=path.name, **kw)


# ---------------------------------------------------------------- the merged model


@pytest.mark.parametrize("base", ["llama", "llama-tied", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"])
def test_f32_gguf_gives_the_merged_logits_in_transformers(exported, base):
    merged, path = exported(base)
    ids = token_ids(seed=2)
    # transformers rebuilds a Gemma config from a GGUF with its default query_pre_attn_scalar
    # (256; llama.cpp has no key for it and scales by head_dim, 16 here): the weights come from
    # the GGUF, the config from the merged directory. The GGUF's own keys are checked below.
    config = {"config": AutoConfig.from_pretrained(merged)} if base.startswith("gemma") else {}
    got = hf_logits(load_gguf(path, **config), ids)
    assert np.abs(got - hf_logits(load_hf(merged), ids)).max() < 1e-5


def test_gemma_norms_are_stored_plus_one_with_llama_cpp_keys(exported):
    from safetensors.numpy import load_file

    merged, path = exported("gemma2")
    hf, tensors, meta = load_file(str(merged / "model.safetensors")), reader_tensors(path), fields(path)
    for gguf_name, hf_name in (
        ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),
        ("blk.0.post_attention_norm.weight", "model.layers.0.post_attention_layernorm.weight"),
        ("blk.0.ffn_norm.weight", "model.layers.0.pre_feedforward_layernorm.weight"),
        ("blk.0.post_ffw_norm.weight", "model.layers.0.post_feedforward_layernorm.weight"),
        ("output_norm.weight", "model.norm.weight"),
    ):
        np.testing.assert_array_equal(tensors[gguf_name], hf[hf_name] + np.float32(1))
    np.testing.assert_array_equal(tensors["blk.1.attn_q.weight"], hf["model.layers.1.self_attn.q_proj.weight"])
    assert "output.weight" not in tensors  # tied
    assert (meta["gemma2.attn_logit_softcapping"], meta["gemma2.final_logit_softcapping"]) == (50.0, 30.0)
    assert (meta["gemma2.attention.sliding_window"], meta["gemma2.attention.key_length"]) == (8, 16)
    gemma3 = fields(exported("gemma3")[1])
    assert gemma3["gemma3.rope.freq_base"] == 1_000_000.0 and gemma3["gemma3.attention.sliding_window"] == 8
    assert "blk.0.attn_q_norm.weight" in reader_tensors(exported("gemma3")[1])


def test_phi3_fused_tensors_go_as_they_are(exported):
    from safetensors.numpy import load_file

    merged, path = exported("phi3")
    hf, tensors, meta = load_file(str(merged / "model.safetensors")), reader_tensors(path), fields(path)
    np.testing.assert_array_equal(tensors["blk.1.attn_qkv.weight"], hf["model.layers.1.self_attn.qkv_proj.weight"])
    np.testing.assert_array_equal(tensors["blk.1.ffn_up.weight"], hf["model.layers.1.mlp.gate_up_proj.weight"])
    assert (meta["general.architecture"], meta["phi3.rope.dimension_count"]) == ("phi3", 16)


def test_f32_gguf_holds_every_merged_tensor_exactly_under_its_llama_cpp_name(exported):
    from safetensors.numpy import load_file

    merged, path = exported("llama")
    hf = load_file(str(merged / "model.safetensors"))
    tensors = reader_tensors(path)
    assert len(tensors) == len(hf) and "output.weight" in tensors
    np.testing.assert_array_equal(tensors["token_embd.weight"], hf["model.embed_tokens.weight"])
    np.testing.assert_array_equal(
        tensors["blk.1.ffn_norm.weight"], hf["model.layers.1.post_attention_layernorm.weight"]
    )
    np.testing.assert_array_equal(tensors["blk.0.ffn_down.weight"], hf["model.layers.0.mlp.down_proj.weight"])
    # q and k in llama.cpp's interleaved RoPE order: 4 query heads, 2 key/value heads
    np.testing.assert_array_equal(
        unpermute_qk(tensors["blk.1.attn_q.weight"], 4), hf["model.layers.1.self_attn.q_proj.weight"]
    )
    np.testing.assert_array_equal(
        unpermute_qk(tensors["blk.1.attn_k.weight"], 2), hf["model.layers.1.self_attn.k_proj.weight"]
    )
    meta = fields(path)
    expected = {
        "general.architecture": "llama",
        "general.type": "model",
        "general.name": "tiny-llama",
        "general.file_type": 0,
        "llama.block_count": 2,
        "llama.embedding_length": 64,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16,
        "llama.context_length": 256,
        "llama.vocab_size": 320,
    }
    assert {k: meta[k] for k in expected} == expected
    assert meta["llama.rope.freq_base"] == 10000.0 and math.isclose(
        meta["llama.attention.layer_norm_rms_epsilon"], 1e-6, rel_tol=1e-6
    )


def test_tied_embeddings_have_no_output_tensor(exported):
    _, path = exported("llama-tied")
    assert "output.weight" not in reader_tensors(path) and "token_embd.weight" in reader_tensors(path)


def test_f16_gguf_is_the_merged_model_rounded_to_f16(exported):
    """Matrices in F16, vectors in F32 (as llama.cpp's converter writes them); the logits equal
    those of the merged model with exactly that rounding applied."""
    import torch

    merged, path = exported("qwen2", "f16")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert (
        types["blk.0.attn_q.weight"] == "F16"
        and types["blk.0.attn_q.bias"] == "F32"
        and types["blk.0.attn_norm.weight"] == "F32"
    )
    rounded = load_hf(merged)
    with torch.no_grad():
        for p in rounded.parameters():
            if p.ndim == 2:
                p.copy_(p.half().float())
    ids = token_ids(seed=3)
    assert np.abs(hf_logits(load_gguf(path), ids) - hf_logits(rounded, ids)).max() < 1e-5


def test_q8_0_weights_are_within_the_documented_bound_and_every_reader_agrees(exported, tmp_path):
    """Q8_0 stores each block of 32 as int8 codes q = round(x / d), d = max|x| / 127, with d
    kept as f16. So |x - d16 * q| <= d / 2 + |d - d16| * 127 <= d * (0.5 + 127 * 2**-11) < 0.563 d.
    The bound is checked for every element; the gguf package's dequantiser and ours must agree
    bit for bit, and transformers must compute what those dequantised weights compute."""

    merged, path = exported("llama", "q8_0")
    from safetensors.numpy import load_file

    hf = load_file(str(merged / "model.safetensors"))
    ours = GGUFFile(path)
    theirs = reader_tensors(path)
    assert ours.tensors["blk.0.ffn_up.weight"].type_name == "Q8_0"
    for name in ours.tensors:
        np.testing.assert_array_equal(ours.tensor(name), theirs[name], err_msg=name)
    w = hf["model.layers.0.mlp.up_proj.weight"]
    deq = theirs["blk.0.ffn_up.weight"]
    d = np.abs(w.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
    assert (np.abs(w.reshape(-1, 32) - deq.reshape(-1, 32)) <= 0.563 * d + 1e-12).all()
    assert np.abs(w - deq).max() > 0  # it did quantise
    # our converter turns the q8_0 GGUF into a float directory; transformers' GGUF loader must agree
    from loraswitch.core.models.gguf.convert import convert_gguf_to_hf

    convert_gguf_to_hf(path, tmp_path)
    ids = token_ids(seed=4)
    assert np.abs(hf_logits(load_gguf(path), ids) - hf_logits(load_hf(tmp_path), ids)).max() < 1e-5


def test_our_gguf_reader_reads_the_export_back_to_the_same_directory(exported, tmp_path):
    """core/models/gguf converts the exported Llama GGUF into the merged weights, bit for bit,
    and into a tokenizer that encodes like the original (SmolLM2's 'smollm' digit splitting)."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from loraswitch.core.models.gguf.convert import convert_gguf_to_hf

    merged, path = exported("llama")
    config = convert_gguf_to_hf(path, tmp_path)
    assert (config["num_key_value_heads"], config["head_dim"], config["tie_word_embeddings"]) == (2, 16, False)
    back, want = load_file(str(tmp_path / "model.safetensors")), load_file(str(merged / "model.safetensors"))
    assert back.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(back[name], want[name], err_msg=name)
    text = "<|im_start|>user\nthe 1234 thin gers  s on'sé<|im_end|>"
    original = Tokenizer.from_file(str(merged / "tokenizer.json")).encode(text).ids
    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(text).ids == original
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"


# ---------------------------------------------------------------- tokenizer metadata


@pytest.mark.parametrize("base, pre", [("llama", "smollm"), ("mistral", "gpt-2"), ("qwen2", "qwen2")])
def test_tokenizer_metadata(exported, base, pre):
    merged, path = exported(base)
    meta = fields(path)
    tokenizer = json.loads((merged / "tokenizer.json").read_text())
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == pre
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == 320 and tokens[266] == "<|im_start|>" and tokens[300] == "[PAD300]"
    assert all(tokens[i] == t for t, i in tokenizer["model"]["vocab"].items())
    assert (types[0], types[266], types[300]) == (1, 3, 5)  # normal, control, unused padding
    assert meta["tokenizer.ggml.merges"] == [
        " ".join(m) if isinstance(m, list) else m for m in tokenizer["model"]["merges"]
    ]
    assert (
        meta["tokenizer.ggml.bos_token_id"],
        meta["tokenizer.ggml.eos_token_id"],
        meta["tokenizer.ggml.padding_token_id"],
    ) == (
        266,
        267,
        265,
    )
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert (
        meta["tokenizer.chat_template"] == json.loads((merged / "tokenizer_config.json").read_text())["chat_template"]
    )


@pytest.mark.parametrize("base", ["llama3-scaled", "qwen2"])
def test_transformers_tokenizer_from_the_gguf_encodes_like_the_original(models, base, tmp_path):
    """transformers builds its tokenizer from the GGUF metadata; for the Llama 3 and Qwen2
    pre-tokenizers it must split digits as the originals do ('12' merges only in groups).
    (transformers ignores the 'smollm' pre-tokenizer name, so SmolLM2 is checked above with ours.)"""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    export_gguf(MergePlan(models(base), None), tmp_path / "m.gguf", "f16", "m")
    text = "<|im_start|>user\nthe 1234 thin gers  s on'sé<|im_end|>"
    original = Tokenizer.from_file(str(models(base) / "tokenizer.json")).encode(text).ids
    assert AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")(text)["input_ids"] == original


def test_byte_tokenizer_of_random_models_exports_with_an_empty_merges_list(tmp_path):
    from loraswitch.core.models.random_model import write_random_model

    write_random_model(tmp_path / "tiny", "tiny")
    export_gguf(MergePlan(tmp_path / "tiny", None), tmp_path / "t.gguf", "f32", "tiny")
    meta = fields(tmp_path / "t.gguf")
    assert meta["tokenizer.ggml.merges"] == [] and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert GGUFFile(tmp_path / "t.gguf").metadata["tokenizer.ggml.merges"] == []
    assert meta["tokenizer.ggml.eos_token_id"] == 258 and len(meta["tokenizer.ggml.tokens"]) == 512


# ---------------------------------------------------------------- RoPE scaling


def test_llama3_rope_scaling_becomes_the_rope_freqs_tensor_transformers_implies(models, tmp_path):
    """llama.cpp divides each RoPE frequency by rope_freqs[i]; transformers' own llama3 RoPE
    init must give base_inv_freq / rope_freqs."""
    import torch
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    export_gguf(MergePlan(models("llama3-scaled"), None), tmp_path / "m.gguf", "f32", "m")
    freqs = reader_tensors(tmp_path / "m.gguf")["rope_freqs.weight"]
    config = AutoConfig.from_pretrained(models("llama3-scaled"))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    base_inv = 1.0 / (10000.0 ** (np.arange(0, 16, 2, dtype=np.float32) / 16))
    np.testing.assert_allclose(base_inv / freqs, scaled.numpy(), rtol=1e-6)
    assert freqs.min() == 1.0 and freqs.max() == 8.0  # both ends of the scaling are exercised


def test_unsupported_rope_scaling_is_refused(models, tmp_path):
    import shutil

    shutil.copytree(models("llama"), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        UserError, match=r"RoPE scaling 'yarn' is not exported to GGUF yet \(supported: linear, llama3\)"
    ):
        export_gguf(MergePlan(tmp_path / "m", None), tmp_path / "m.gguf", "f16", "m")
    assert not list(tmp_path.glob("*.gguf*"))


# ---------------------------------------------------------------- the adapter alone


@pytest.mark.parametrize(
    "base, adapter", [("llama", "all"), ("llama", "rslora"), ("qwen2", "all"), ("gemma3", "all"), ("phi3", "fused")]
)
def test_lora_gguf_applied_to_the_base_gguf_is_the_merged_gguf(models, adapters, exported, base, adapter, tmp_path):
    """What llama.cpp computes with --lora: W_base + alpha / r * lora_b @ lora_a, per target, in
    GGUF order. That must be the merged GGUF's tensor (q/k permutation included)."""
    lora = read_lora_adapter(adapters(base, adapter))
    export_gguf_lora(MergePlan(models(base), lora), tmp_path / "a.gguf", "f32", "a")
    export_gguf(MergePlan(models(base), None), tmp_path / "base.gguf", "f32", "base")
    export_gguf(MergePlan(models(base), lora), tmp_path / "merged.gguf", "f32", "merged")
    meta = fields(tmp_path / "a.gguf")
    assert (meta["general.type"], meta["adapter.type"], meta["general.architecture"]) == ("adapter", "lora", base)
    assert math.isclose(meta["adapter.lora.alpha"], lora.scale * lora.r, rel_tol=1e-6)
    if adapter == "rslora":
        assert math.isclose(meta["adapter.lora.alpha"], 4 * math.sqrt(8), rel_tol=1e-6)  # alpha * sqrt(r)
    pieces, base_t = reader_tensors(tmp_path / "a.gguf"), reader_tensors(tmp_path / "base.gguf")
    merged_t = reader_tensors(tmp_path / "merged.gguf")
    targets = sorted({n.rsplit(".", 1)[0] for n in pieces})
    assert len(targets) == len(lora.modules) and len(pieces) == 2 * len(targets)
    for name in targets:
        a, b = pieces[name + ".lora_a"], pieces[name + ".lora_b"]
        assert a.shape[0] == b.shape[1] == lora.r
        applied = base_t[name] + meta["adapter.lora.alpha"] / lora.r * (b @ a)
        np.testing.assert_allclose(applied, merged_t[name], atol=2e-6, err_msg=name)
        assert np.abs(merged_t[name] - base_t[name]).max() > 1e-3


def test_lora_gguf_permutes_lora_b_like_llama_cpp_convert_lora_to_gguf(models, adapters, tmp_path):
    lora = read_lora_adapter(adapters("llama"))
    export_gguf_lora(MergePlan(models("llama"), lora), tmp_path / "a.gguf", "f32", "a")
    pieces = reader_tensors(tmp_path / "a.gguf")
    a, b = lora.modules["model.layers.0.self_attn.k_proj"]
    np.testing.assert_array_equal(pieces["blk.0.attn_k.weight.lora_a"], a)  # A as peft stores it, [r, in]
    np.testing.assert_array_equal(pieces["blk.0.attn_k.weight.lora_b"], permute_qk(b, 2))  # B rows in llama.cpp's order
    np.testing.assert_array_equal(
        pieces["blk.0.attn_v.weight.lora_b"], lora.modules["model.layers.0.self_attn.v_proj"][1]
    )


def test_lora_gguf_refuses_lm_head_on_tied_embeddings(models, adapters, tmp_path):
    lora = read_lora_adapter(adapters("llama-tied", "lm_head"))
    with pytest.raises(
        UserError, match=r"a LoRA on lm_head of a model with tied embeddings cannot be a llama.cpp LoRA"
    ):
        export_gguf_lora(MergePlan(models("llama-tied"), lora), tmp_path / "a.gguf", "f32", "a")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- refusals


def test_unknown_architectures_and_tokenizers_are_refused(models, tmp_path):
    import shutil

    shutil.copytree(models("llama"), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(dict(config, architectures=["GPT2LMHeadModel"])))
    with pytest.raises(
        UserError, match=r"architecture \['GPT2LMHeadModel'\] has no GGUF export yet; exported: LlamaForCausalLM"
    ):
        export_gguf(MergePlan(tmp_path / "m", None), tmp_path / "x.gguf", "f16", "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((tmp_path / "m" / "tokenizer.json").read_text())
    tokenizer["decoder"] = {"type": "WordPiece", "prefix": "##", "cleanup": True}  # neither BPE nor SentencePiece
    (tmp_path / "m" / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(UserError, match=r"tokenizer.json: only byte-level BPE .* and SentencePiece tokenizers .* are"):
        export_gguf(MergePlan(tmp_path / "m", None), tmp_path / "x.gguf", "f16", "m")
    assert not list(tmp_path.glob("*.gguf*"))


def test_disk_full_while_writing_a_gguf_leaves_nothing_behind(models, tmp_path, monkeypatch):
    import errno

    calls = []
    original = gguf.GGUFWriter.write_tensor_data

    def full_disk(self, tensor, *args, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, tensor, *args, **kw)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full_disk)
    with pytest.raises(UserError, match=r"cannot write .*m\.gguf \(no space left on device\); nothing was written"):
        export_gguf(MergePlan(models("llama"), None), tmp_path / "m.gguf", "f16", "m")
    assert list(tmp_path.iterdir()) == []

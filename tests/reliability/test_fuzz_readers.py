"""Fuzzed readers: every file loraswitch reads from a user, fed arbitrary bytes and arbitrary JSON.

The property is the promise of docs/reliability.md: reading ends in success or in a UserError
whose one line names the file (``file:line`` for a data line). Any other exception fails the
test, and so would a hang: every input is bounded in size and nesting, and readers must not
block on them. Each reader gets three kinds of input:

- arbitrary bytes (most are not UTF-8 or not JSON);
- arbitrary JSON values, including deep nesting, NaN/Infinity literals, huge integers and lone
  surrogate escapes, which the standard json module accepts;
- a valid file with one key replaced by an arbitrary value (or removed), which is what reaches
  the deeper rules.

Budget: ``FUZZ`` keeps the whole module to seconds of CI (docs/reliability.md has the measured
time); ``FUZZ_EXAMPLES=5000 pytest tests/reliability/test_fuzz_readers.py`` explores further.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraswitch.core.cli.commands._inference import adapter_settings
from loraswitch.core.data.chat_tokenizer import ChatTokenizer
from loraswitch.core.data.jsonl import read_jsonl
from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import MAX_JSON_DEPTH
from loraswitch.core.models.model_dir import read_safetensors_header, validate_model_dir
from loraswitch.core.models.random_model import write_random_model

# CI: a fixed, derandomized sample (the same examples every run, so a red CI is a real change);
# FUZZ_EXAMPLES=5000 explores fresh random examples locally.
_LONG = "FUZZ_EXAMPLES" in os.environ
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)),
    deadline=None,
    derandomize=not _LONG,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# ---------------------------------------------------------------- inputs

TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["messages", "role", "content", "user", "assistant", "prompt", "completion", "text", "weight", "r"]
)
SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | TEXT
)
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=16
)
# Raw JSON fragments the json module accepts although they are not JSON, or that trip it.
HOSTILE = st.sampled_from(
    [
        "NaN",
        "-Infinity",
        "1e999",
        "9" * 5000,
        '"\\ud800"',
        '"a\\udfffb"',
        '"\\udc00\\ud800"',
        "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
        "[" * 50_000,
        '{"a":' * 3000 + "1" + "}" * 3000,
        '"' + "[" * 5000 + '"',
        '"\\' * 3000,
    ]
)


@st.composite
def json_texts(draw, base: dict | None = None) -> bytes:
    """A JSON document as bytes: arbitrary, ``base`` with one key changed, or hostile."""
    kind = draw(st.sampled_from(["value", "edit", "hostile"] if base else ["value", "hostile"]))
    if kind == "value":
        return json.dumps(draw(JSON_VALUES)).encode()
    if kind == "hostile":
        fragment = draw(HOSTILE)
        wrap = draw(st.sampled_from(["{}", '{"k": {}}', "[1, {}]", '{"messages": [{"role": "user", "content": {}}]}']))
        return wrap.replace("{}", fragment, 1).encode("utf-8", "surrogatepass")
    edited = dict(base)
    key = draw(st.sampled_from(sorted(base)) | TEXT)
    if draw(st.booleans()):
        edited.pop(key, None)
    else:
        edited[key] = draw(JSON_VALUES)
    return json.dumps(edited).encode()


FILE_BYTES = st.binary(max_size=512)


def check(path: Path, call) -> tuple[bool, object]:
    """``call()`` returns (True, its value), or raises a UserError naming ``path`` (False, None)."""
    try:
        return True, call()
    except UserError as e:
        assert str(path) in str(e), str(e)
        return False, None


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A random:tiny directory (config, byte tokenizer with chat template, fp32 weights)."""
    return write_random_model(tmp_path_factory.mktemp("fuzz") / "tiny", "tiny")


def fresh_copy(model: Path, name: str) -> Path:
    target = model.parent / name
    if not target.exists():
        shutil.copytree(model, target)
    return target


# ---------------------------------------------------------------- a data line


@FUZZ
@given(
    line=FILE_BYTES
    | json_texts({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
)
def test_a_data_line(model, line):
    path = model.parent / "data.jsonl"
    path.write_bytes(b'{"prompt": "1+1=", "completion": "2"}\n' + line.replace(b"\n", b" ") + b"\n")
    ok, records = check(path, lambda: read_jsonl(path))
    if ok:  # a record that reads also tokenises, or names its line
        tokenizer = ChatTokenizer.from_dir(model)
        check(path, lambda: tokenizer.encode_records(records, 64))


@FUZZ
@given(text=st.text(st.characters(categories=["Cs", "L", "N", "P", "Zs"]), max_size=40))
def test_a_prompt_from_the_command_line(model, text):
    """Undecodable argv bytes arrive as lone surrogates (surrogateescape): Cs draws them."""
    tokenizer = ChatTokenizer.from_dir(model)
    try:
        tokenizer.encode_prompt(text)
    except UserError as e:
        assert str(e).startswith("prompt: holds the lone UTF-16 surrogate"), e


# ---------------------------------------------------------------- model directory files


@FUZZ
@given(data=st.data())
def test_config_json(model, data):
    d = fresh_copy(model, "config-fuzz")
    base = json.loads((model / "config.json").read_text())
    path = d / "config.json"
    path.write_bytes(data.draw(FILE_BYTES | json_texts(base)))
    ok, _ = check(d, lambda: validate_model_dir(d))  # config.json, or the weights it contradicts
    if ok:  # accepted: the family registry's reading of it, which both backends build from, works too
        from loraswitch.core.models.families import spec_from_config

        spec_from_config(json.loads(path.read_text()), path)


@FUZZ
@given(data=st.data())
def test_tokenizer_config_json(model, data):
    d = fresh_copy(model, "tokenizer-config-fuzz")
    base = {"chat_template": "{{ messages[0]['content'] }}", "eos_token": "<|im_end|>", "bos_token": "<|endoftext|>"}
    path = d / "tokenizer_config.json"
    path.write_bytes(data.draw(FILE_BYTES | json_texts(base)))

    def load_and_use():
        tokenizer = ChatTokenizer.from_dir(d)
        tokenizer.encode_record(
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, 32
        )
        tokenizer.encode_prompt("hi")
        return tokenizer

    check(path, load_and_use)


def read_adapter_config(adapter_dir: Path) -> dict:
    """The fuzz target for adapter_config.json: today's reading path of ``generate`` and
    ``evaluate`` (core/cli/commands/_inference.py). Re-point it when core/adapters/ lands."""
    return adapter_settings(adapter_dir)


@FUZZ
@given(data=st.data())
def test_adapter_config_json(tmp_path_factory, data):
    d = tmp_path_factory.getbasetemp() / "adapter-fuzz"
    d.mkdir(exist_ok=True)
    base = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "use_rslora": False}
    path = d / "adapter_config.json"
    path.write_bytes(data.draw(FILE_BYTES | json_texts(base)))
    ok, values = check(path, lambda: read_adapter_config(d))
    if ok:
        assert isinstance(values["lora_r"], int)


# ---------------------------------------------------------------- safetensors headers


def safetensors_bytes(header: object, data: bytes = b"", raw: bytes | None = None) -> bytes:
    body = raw if raw is not None else json.dumps(header).encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(body)) + body + data


ENTRY = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I32", "BOOL", "F7", ""]) | JSON_VALUES,
        "shape": st.lists(st.integers(-1, 4), max_size=3) | JSON_VALUES,
        "data_offsets": st.lists(st.integers(-1, 80), min_size=2, max_size=2) | JSON_VALUES,
    }
)


@FUZZ
@given(
    content=FILE_BYTES
    | st.builds(safetensors_bytes, JSON_VALUES, st.binary(max_size=64))
    | st.builds(safetensors_bytes, st.dictionaries(TEXT, ENTRY, max_size=3), st.binary(max_size=80))
    | st.builds(lambda t, d: safetensors_bytes(None, d, t), json_texts(), st.binary(max_size=16))
)
def test_safetensors_header(tmp_path_factory, content):
    path = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
    path.write_bytes(content)
    ok, header = check(path, lambda: read_safetensors_header(path))
    if ok:
        # What loraswitch accepts, safetensors itself opens and reads, byte for byte.
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            assert set(f.keys()) == set(header)
            for name, info in header.items():
                if info["dtype"] != "BF16":  # numpy has no bfloat16
                    assert f.get_tensor(name).shape == tuple(info["shape"])


# ---------------------------------------------------------------- the classes behind the cases


@FUZZ
@given(depth=st.integers(MAX_JSON_DEPTH + 1, 20_000), opener=st.sampled_from(["[", '{"a":', '[{"b":', '[" [ ",']))
def test_any_nesting_past_the_limit_is_one_line(tmp_path_factory, depth, opener):
    closer = {"[": "]", '{"a":': "}", '[{"b":': "}]", '[" [ ",': "]"}[opener]
    path = tmp_path_factory.getbasetemp() / "deep.jsonl"
    path.write_text(opener * depth + "1" + closer * depth + "\n")
    with pytest.raises(UserError, match=rf"deep.jsonl:1: JSON nested \d+ levels deep; at most {MAX_JSON_DEPTH}"):
        read_jsonl(path)


@FUZZ
@given(code=st.integers(0xD800, 0xDFFF), where=st.sampled_from(["content", "prompt", "completion", "text"]))
def test_any_lone_surrogate_is_refused_at_its_line(tmp_path_factory, code, where):
    record = {
        "content": '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a\\u%04x"}]}',
        "prompt": '{"prompt": "\\u%04x", "completion": "b"}',
        "completion": '{"prompt": "a", "completion": "\\u%04x"}',
        "text": '{"text": "\\u%04x"}',
    }[where]
    path = tmp_path_factory.getbasetemp() / "surrogate.jsonl"
    path.write_text('{"text": "ok"}\n' + record % code + "\n")
    with pytest.raises(UserError, match=rf"surrogate.jsonl:2: a string holds the lone UTF-16 surrogate \\u{code:04x}"):
        read_jsonl(path)


@FUZZ
@given(dtype=st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_]), which=st.integers(0, 20))
def test_any_non_float_weight_is_named(model, dtype, which):
    from safetensors.numpy import load_file, save_file

    d = fresh_copy(model, "dtype-fuzz")
    weights = load_file(str(model / "model.safetensors"))
    name = sorted(weights)[which % len(weights)]
    weights[name] = weights[name].astype(dtype)
    save_file(weights, str(d / "model.safetensors"))
    with pytest.raises(
        UserError, match=rf"model.safetensors: tensor '{name}' has dtype \w+; base weights must be floating"
    ):
        validate_model_dir(d)

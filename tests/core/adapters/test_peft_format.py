"""The core's PEFT adapter format: peft's defaults, refusals in one line, weights checked, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from loraswitch.core.adapters import peft_format as F
from loraswitch.core.config import Config
from loraswitch.core.errors import UserError

MODULES = {"model.layers.0.self_attn.q_proj": (8, 8), "model.layers.0.mlp.down_proj": (16, 8)}


def write_config(directory, **keys):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / F.CONFIG_FILE).write_text(json.dumps(keys))
    return directory


def test_absent_keys_take_peft_defaults(tmp_path):
    config = F.read_adapter_config(write_config(tmp_path))
    assert (config.r, config.lora_alpha, config.use_rslora, config.lora_dropout) == (8, 8.0, False, 0.0)
    assert config.target_modules == ["q_proj", "v_proj"]  # peft's default for llama and mistral
    assert config.base_model_name_or_path is None and config.scaling == 1.0
    # The bug this replaced: generate/evaluate defaulted a missing lora_alpha to r.
    assert F.read_adapter_config(write_config(tmp_path / "r16", r=16)).scaling == 0.5


def test_all_linear_and_a_full_peft_config(tmp_path):
    written = F.AdapterConfig(r=4, lora_alpha=16, use_rslora=True, target_modules=["v_proj", "q_proj"])
    config = F.read_adapter_config(write_config(tmp_path, **written.to_json(), peft_version="0.21.0"))
    assert config == F.AdapterConfig(r=4, lora_alpha=16.0, use_rslora=True, target_modules=["q_proj", "v_proj"])
    assert config.scaling == 8.0  # 16 / sqrt(4)
    every = F.read_adapter_config(write_config(tmp_path / "all", target_modules="all-linear"))
    assert every.target_modules == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"peft_type": "IA3"}, r"peft_type = 'IA3': loraswitch loads LoRA adapters only"),
        ({"use_dora": True}, r"use_dora = True is not supported \(loraswitch applies plain LoRA only\)"),
        ({"bias": "all"}, r"bias = 'all' is not supported"),
        ({"rank_pattern": {"q_proj": 4}}, r"rank_pattern = \{'q_proj': 4\} is not supported"),
        ({"layers_to_transform": [0]}, r"layers_to_transform = \[0\] is not supported"),
        ({"modules_to_save": ["lm_head"]}, r"modules_to_save = \['lm_head'\] is not supported"),
        ({"init_lora_weights": "pissa"}, r"init_lora_weights = 'pissa' rewrites the base model's weights"),
        ({"task_type": "SEQ_CLS"}, r"task_type = 'SEQ_CLS': loraswitch loads causal language model adapters only"),
        ({"target_modules": ".*q_proj"}, r"target_modules = '\.\*q_proj': a regular expression is not supported"),
        ({"target_modules": []}, r"target_modules = \[\]: must be a non-empty list of module names"),
        ({"r": 0}, r"r = 0: must be a positive integer"),
        ({"r": 4.0}, r"r = 4\.0: must be a positive integer"),
        ({"lora_alpha": "8"}, r"lora_alpha = '8': must be a positive number"),
        ({"use_rslora": "yes"}, r"use_rslora = 'yes': must be true or false"),
    ],
)
def test_unsupported_or_malformed_keys_are_one_line(tmp_path, keys, message):
    with pytest.raises(UserError, match=rf"^{tmp_path}/adapter_config.json: {message}") as e:
        F.read_adapter_config(write_config(tmp_path, **keys))
    assert "\n" not in str(e.value)


def test_off_values_of_unknown_keys_are_accepted(tmp_path):
    keys = {"use_dora": False, "bias": "none", "rank_pattern": {}, "layers_to_transform": None, "eva_config": None}
    assert F.read_adapter_config(write_config(tmp_path, **keys)).r == 8


def test_a_missing_config_says_what_an_adapter_directory_holds(tmp_path):
    with pytest.raises(UserError, match=r"adapter_config.json: missing; a PEFT adapter directory holds"):
        F.read_adapter_config(tmp_path)


def test_check_matches_run_names_the_key_and_the_fix(tmp_path):
    run = Config(lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"])
    F.check_matches_run(F.AdapterConfig(r=4, lora_alpha=8, target_modules=["v_proj", "q_proj"]), run, tmp_path)
    with pytest.raises(UserError, match=r"r = 8 but this run has lora_r = 4; set lora_r: 8 to load this adapter"):
        F.check_matches_run(F.AdapterConfig(lora_alpha=8, target_modules=["q_proj", "v_proj"]), run, tmp_path)
    with pytest.raises(UserError, match=r"lora_alpha = 16 but this run has lora_alpha = 8\.0; set lora_alpha: 16"):
        F.check_matches_run(F.AdapterConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]), run, tmp_path)
    with pytest.raises(UserError, match=r"target_modules = \['q_proj'\] but this run has lora_target_modules"):
        F.check_matches_run(F.AdapterConfig(r=4, lora_alpha=8, target_modules=["q_proj"]), run, tmp_path)


def tensors(r=2, dtype=np.float32):
    rng = np.random.default_rng(0)
    return {name: rng.normal(size=shape).astype(dtype) for name, shape in F.expected_shapes(MODULES, r).items()}


def test_write_then_read_round_trip_byte_stable(tmp_path):
    config = F.AdapterConfig(r=2, lora_alpha=4, target_modules=["down_proj", "q_proj"], base_model_name_or_path="m")
    written = tensors()
    F.write_adapter(tmp_path / "a", config, written)
    F.write_adapter(tmp_path / "b", config, dict(reversed(list(written.items()))))
    for name in (F.CONFIG_FILE, F.WEIGHTS_FILE):  # independent of the dict's order
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert F.read_adapter_config(tmp_path / "a") == config
    read = F.read_adapter_weights(tmp_path / "a", F.expected_shapes(MODULES, 2))
    assert all(np.array_equal(read[k], written[k]) and read[k].dtype == np.float32 for k in written)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [F.CONFIG_FILE, F.WEIGHTS_FILE]  # no temp files
    assert json.loads((tmp_path / "a" / F.CONFIG_FILE).read_text())["lora_alpha"] == 4  # an integer, as peft writes


def test_half_precision_adapters_are_widened_exactly(tmp_path):
    import ml_dtypes

    halves = tensors(dtype=np.float16)
    write_config(tmp_path, r=2)
    save_file(halves, str(tmp_path / F.WEIGHTS_FILE))
    read = F.read_adapter_weights(tmp_path, F.expected_shapes(MODULES, 2))
    assert all(np.array_equal(read[k], halves[k].astype(np.float32)) for k in halves)
    # bf16, which numpy has no dtype for (written here with ml_dtypes, read without it)
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors().items()}
    save_file(bf16, str(tmp_path / F.WEIGHTS_FILE))
    read = F.read_adapter_weights(tmp_path, F.expected_shapes(MODULES, 2))
    assert all(np.array_equal(read[k], bf16[k].astype(np.float32)) for k in bf16)


def test_weight_problems_name_the_file_and_the_tensor(tmp_path):
    write_config(tmp_path, r=2)
    expected = F.expected_shapes(MODULES, 2)
    good = tensors()
    with pytest.raises(UserError, match=r"adapter_model.safetensors: missing; a PEFT adapter directory holds"):
        F.read_adapter_weights(tmp_path, expected)
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(UserError, match=r"missing \(adapter_model.bin uses pickle, which loraswitch does not load\)"):
        F.read_adapter_weights(tmp_path, expected)
    name_a = F.tensor_name("model.layers.0.self_attn.q_proj", "A")
    cases = [
        ({k: v for k, v in good.items() if k != name_a}, rf"tensor '{name_a}' is missing"),
        ({**good, "base_model.model.extra.lora_A.weight": good[name_a]}, r"unexpected tensor 'base_model.model.extra"),
        (
            {**good, name_a: good[name_a].T.copy()},
            rf"tensor '{name_a}' has shape \[8, 2\], this model expects \[2, 8\]",
        ),
        ({**good, name_a: good[name_a].astype(np.int32)}, rf"tensor '{name_a}' has dtype I32, expected a float type"),
    ]
    for weights, message in cases:
        save_file(weights, str(tmp_path / F.WEIGHTS_FILE))
        with pytest.raises(UserError, match=rf"{F.WEIGHTS_FILE}: {message}"):
            F.read_adapter_weights(tmp_path, expected)


def test_tensor_names_are_peft_names():
    assert F.tensor_name("model.layers.3.self_attn.q_proj", "A") == (
        "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
    )
    assert F.module_of("base_model.model.lm_head.lora_B.weight") == ("lm_head", "B")

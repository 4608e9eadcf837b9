"""The portable AdamW state: one format every backend writes and reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loraswitch.core.adapters import optimizer_state as S
from loraswitch.core.errors import UserError

SHAPES = {"base_model.model.proj.lora_A.weight": (2, 4), "base_model.model.proj.lora_B.weight": (4, 2)}


def state(step=3):
    rng = np.random.default_rng(0)
    return S.AdamWState(
        step,
        {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()},
        {k: rng.random(size=s).astype(np.float32) for k, s in SHAPES.items()},
    )


def test_round_trip_is_exact(tmp_path):
    written = state()
    S.write_state(tmp_path, written, weight_decay=0.1, extra={"backend": "numpy"})
    read = S.read_state(tmp_path, SHAPES)
    assert read.step == 3
    for name in SHAPES:
        assert np.array_equal(read.exp_avg[name], written.exp_avg[name])
        assert np.array_equal(read.exp_avg_sq[name], written.exp_avg_sq[name])
    record = json.loads((tmp_path / S.JSON_FILE).read_text())
    assert record["format"] == "loraswitch-adamw/1" and record["backend"] == "numpy"
    assert record["betas"] == [0.9, 0.999] and record["eps"] == 1e-8 and record["weight_decay"] == 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == [S.JSON_FILE, S.TENSORS_FILE]


def test_step_zero_needs_no_moments(tmp_path):
    S.write_state(tmp_path, state(step=0), weight_decay=0.0, extra={})
    (tmp_path / S.TENSORS_FILE).unlink()
    read = S.read_state(tmp_path, SHAPES)
    assert read.step == 0 and not any(v.any() for v in read.exp_avg.values())


def test_mismatches_name_the_file(tmp_path):
    S.write_state(tmp_path, state(), weight_decay=0.0, extra={})
    name = "base_model.model.proj.lora_A.weight"
    with pytest.raises(
        UserError, match=rf"optimizer.json: '{name}' has shape \[2, 4\] in the checkpoint, this model has \[3, 4\]"
    ):
        S.read_state(tmp_path, {**SHAPES, name: (3, 4)})
    with pytest.raises(
        UserError, match=r"optimizer.json: no state for 'other'; the checkpoint belongs to another model"
    ):
        S.read_state(tmp_path, {**SHAPES, "other": (1,)})
    with pytest.raises(UserError, match=rf"optimizer.json: state for '{name}', which this model does not have"):
        S.read_state(tmp_path, {k: v for k, v in SHAPES.items() if k != name})
    record = json.loads((tmp_path / S.JSON_FILE).read_text())
    (tmp_path / S.JSON_FILE).write_text(json.dumps(dict(record, step=-1)))
    with pytest.raises(UserError, match=r"optimizer.json: step = -1: must be a non-negative integer"):
        S.read_state(tmp_path, SHAPES)
    (tmp_path / S.JSON_FILE).write_text(json.dumps(dict(record, format="jax")))
    with pytest.raises(UserError, match=r"optimizer.json: format 'jax' is not 'loraswitch-adamw/1'"):
        S.read_state(tmp_path, SHAPES)
    (tmp_path / S.JSON_FILE).write_text(json.dumps(record))
    (tmp_path / S.TENSORS_FILE).write_bytes((tmp_path / S.TENSORS_FILE).read_bytes()[:-8])
    with pytest.raises(UserError, match=r"optimizer.safetensors: tensor .* the file is truncated"):
        S.read_state(tmp_path, SHAPES)

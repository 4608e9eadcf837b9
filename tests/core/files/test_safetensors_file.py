"""The one safetensors reader: numpy arrays out, one line naming the file for every problem."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from loraswitch.core.errors import UserError
from loraswitch.core.files.safetensors_file import read_header, read_tensors, write_tensors


def test_reads_what_safetensors_writes(tmp_path):
    import ml_dtypes

    arrays = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f16": np.array([1.5, -2.25], np.float16),
        "i64": np.array([[1, -2]], np.int64),
        "u8": np.arange(4, dtype=np.uint8),
        "bf16": np.array([1.0, -3.5, 1e-3], ml_dtypes.bfloat16),
        "empty": np.zeros((0, 4), np.float32),
    }
    save_file(arrays, str(tmp_path / "t.safetensors"))
    read = read_tensors(tmp_path / "t.safetensors")
    assert sorted(read) == sorted(arrays)
    for name, value in arrays.items():
        expected = value.astype(np.float32) if name == "bf16" else value
        assert read[name].dtype == expected.dtype and np.array_equal(read[name], expected), name
    read["f32"][0, 0] = 7  # writable copies
    f16 = read_header(tmp_path / "t.safetensors")["f16"]
    assert (f16["dtype"], f16["shape"], f16["data_offsets"][1] - f16["data_offsets"][0]) == ("F16", [2], 4)


def test_write_is_atomic_and_readable_by_safetensors(tmp_path):
    from safetensors.numpy import load_file

    write_tensors(tmp_path / "w.safetensors", {"a": np.ones((2, 2), np.float32)}, metadata={"format": "pt"})
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    assert np.array_equal(load_file(str(tmp_path / "w.safetensors"))["a"], np.ones((2, 2)))


def raw_file(path, header: dict, data: bytes = b""):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@pytest.mark.parametrize(
    "header, data, message",
    [
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 4,
            "ends at byte 8 but the file holds 4",
        ),
        (
            {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            b"\0" * 8,
            "has 8 bytes, but F32 \\[3\\] needs 12; the file is damaged",
        ),
        ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype 'C64'"),
        ({"a": {"dtype": "F32", "shape": "x"}}, b"", "entry 'a' has no valid shape/data_offsets"),
    ],
)
def test_damaged_files_are_one_line(tmp_path, header, data, message):
    path = raw_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(UserError, match=rf"^{path}: .*{message}"):
        read_tensors(path)


def test_not_safetensors_at_all(tmp_path):
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(UserError, match="shorter than its 8-byte header length"):
        read_tensors(tmp_path / "short")
    (tmp_path / "huge").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(UserError, match="header length 1000000000 exceeds the file size"):
        read_tensors(tmp_path / "huge")
    with pytest.raises(UserError, match=r"none.safetensors: missing; say why"):
        read_tensors(tmp_path / "none.safetensors", if_missing="say why")

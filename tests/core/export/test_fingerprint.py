"""The base-weights fingerprint: stable, blind to sharding, sensitive to weights, dtype and
shape; and the merge-time check built on it (refuse, --force, warn when absent)."""

from __future__ import annotations

import json
import shutil

import pytest

from loraswitch.core.errors import UserError
from loraswitch.core.export.fingerprint import (
    FINGERPRINT_FILE,
    base_fingerprint,
    check_base,
    read_base_fingerprint,
    write_base_fingerprint,
)
from loraswitch.core.export.merge import MergePlan, write_merged_dir


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_fingerprint_is_stable_and_ignores_how_weights_are_sharded(models, tmp_path):
    base = models("llama")
    fp = base_fingerprint(base)
    assert fp.startswith("v1:") and len(fp) == 3 + 64 and base_fingerprint(copy(base, tmp_path / "copy")) == fp
    resharded = tmp_path / "sharded"
    resharded.mkdir()
    write_merged_dir(MergePlan(base, None), resharded, {}, max_shard_bytes=50_000)  # same tensors, 5+ files
    assert len(list(resharded.glob("*.safetensors"))) > 4 and base_fingerprint(resharded) == fp


def test_fingerprint_changes_with_the_weights_their_dtype_or_the_model(models, tmp_path):
    from loraswitch.core.export.tensors import SafetensorsDir

    base = models("llama")
    fp = base_fingerprint(base)
    edited = copy(base, tmp_path / "edited")
    entry = SafetensorsDir(edited).entries["model.layers.1.mlp.up_proj.weight"]
    with open(edited / "model.safetensors", "r+b") as f:  # one float in the middle window of one tensor
        f.seek(entry.offset + (entry.nbytes - 1024) // 3 + 100)
        f.write(b"\x01\x02\x03\x04")
    assert base_fingerprint(edited) != fp
    cast = tmp_path / "cast"
    cast.mkdir()
    write_merged_dir(MergePlan(base, None, "bf16"), cast, {}, max_shard_bytes=10**9)
    assert base_fingerprint(cast) != fp
    assert base_fingerprint(models("mistral")) != fp


def test_adapter_records_and_merge_checks_the_base(models, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    assert check_base(adapter, models("llama"), "llama", force=False).endswith(
        "cannot verify that llama is the base it was trained on"
    )
    write_base_fingerprint(adapter, models("llama"), "random:x")
    record = json.loads((adapter / FINGERPRINT_FILE).read_text())
    assert record["fingerprint"] == read_base_fingerprint(adapter) == base_fingerprint(models("llama"))
    assert check_base(adapter, models("llama"), "llama", force=False) is None
    with pytest.raises(
        UserError,
        match=r"the adapter was trained on other base weights than mistral .*; give the right --model, or --force",
    ):
        check_base(adapter, models("mistral"), "mistral", force=False)
    assert "merging anyway (--force)" in check_base(adapter, models("mistral"), "mistral", force=True)


def test_a_base_without_weights_on_disk_records_nothing(tmp_path):
    from loraswitch.core.models.random_model import write_random_model

    write_random_model(tmp_path / "m", "tiny", with_weights=False)
    (tmp_path / "adapter").mkdir()
    write_base_fingerprint(tmp_path / "adapter", tmp_path / "m", "random:tiny")
    assert not (tmp_path / "adapter" / FINGERPRINT_FILE).exists()


def test_damaged_fingerprint_file_is_one_line(tmp_path):
    (tmp_path / FINGERPRINT_FILE).write_text("{not json")
    with pytest.raises(UserError, match=r"loraswitch_base.json: not a valid base fingerprint file"):
        read_base_fingerprint(tmp_path)

"""`loraswitch merge` and `loraswitch export` on a real run directory: a 2-step torch run on
random:tiny, whose adapter records the base fingerprint. The numbers are proved in
tests/core/export; here: RUN_DIR resolution, the fingerprint check, --overwrite, messages."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from loraswitch.core.cli import main

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("gguf")

pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 2-step torch run on random:tiny (trained once for the module)."""
    import os

    from loraswitch.core.plugins import reset_plugin_manager

    d = tmp_path_factory.mktemp("run")
    (d / "train.jsonl").write_text(
        "".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(12))
    )
    (d / "run.yaml").write_text(
        f"backend: torch\nmodel: random:tiny\ndata: train.jsonl\noutput_dir: {d / 'run'}\nprecision: fp32\ncompile: 'false'\n"
        "n_steps: 2\nbatch_size: 2\naccumulation_steps: 1\neval_every: 2\nsave_every: 2\nlora_r: 4\nlora_alpha: 8\n"
        "learning_rate_multiplier: 0.5\nlora_dropout: 0.0\n"
    )
    saved = os.environ.get("LORASWITCH_CACHE")
    os.environ["LORASWITCH_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    try:
        reset_plugin_manager()
        assert main(["train", str(d / "run.yaml"), "--quiet"]) == 0
    finally:
        reset_plugin_manager()
        if saved is None:
            os.environ.pop("LORASWITCH_CACHE", None)
        else:
            os.environ["LORASWITCH_CACHE"] = saved
    return d / "run"


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def tiny_base():
    from loraswitch.core.models.sources import resolve_model

    return resolve_model("random:tiny").path


def test_merge_and_export_a_run_directory(run_dir, tmp_path, capsys):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert (run_dir / "adapter" / "loraswitch_base.json").is_file()
    rc, out, err = run_cli(capsys, "merge", run_dir, "--out", tmp_path / "merged", "--max_shard_size", "300KB")
    assert rc == 0 and err == "", err
    assert out.startswith("merged 14 LoRA layers (scale 2) into random:tiny: ")
    assert (tmp_path / "merged" / "model.safetensors.index.json").is_file()

    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 512, (1, 10)))
    base = AutoModelForCausalLM.from_pretrained(tiny_base(), dtype=torch.float32)
    with torch.no_grad():
        want = PeftModel.from_pretrained(base, run_dir / "adapter").eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()(ids).logits
    assert (got - want).abs().max() < 1e-5
    capsys.readouterr()  # transformers' loading messages

    rc, out, err = run_cli(
        capsys, "export", run_dir, "--format", "gguf", "--out", tmp_path / "m.gguf", "--dtype", "q8_0"
    )
    assert rc == 0 and err == "" and "merged model, 21 tensors, q8_0" in out
    rc, out, err = run_cli(
        capsys, "export", "--adapter", run_dir / "adapter", "--format", "gguf-lora", "--out", tmp_path / "a.gguf"
    )
    assert (
        rc == 0 and err == "" and "(adapter, 28 tensors, f32," in out
    )  # base from the adapter's base_model_name_or_path
    rc, out, _ = run_cli(
        capsys, "export", "--model", tmp_path / "merged", "--format", "gguf", "--out", tmp_path / "plain.gguf"
    )
    assert rc == 0 and "(model, 21 tensors, f16," in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "m.gguf", "merged", "plain.gguf"]


def test_a_different_base_is_refused_unless_forced(run_dir, tmp_path, capsys):
    from loraswitch.core.models.random_model import write_random_model

    other = write_random_model(tmp_path / "other", "tiny", seed=1)  # same shapes, other weights
    rc, _, err = run_cli(capsys, "merge", run_dir, "--model", other, "--out", tmp_path / "m")
    assert rc == 2 and "the adapter was trained on other base weights than" in err and "--force" in err
    assert err.count("\n") == 1 and not (tmp_path / "m").exists()
    rc, _, err = run_cli(capsys, "merge", run_dir, "--model", other, "--out", tmp_path / "m", "--force")
    assert rc == 0 and err.startswith("warning: ") and "merging anyway (--force)" in err


def test_an_adapter_without_fingerprint_merges_with_a_warning(run_dir, tmp_path, capsys):
    shutil.copytree(run_dir / "adapter", tmp_path / "adapter")
    (tmp_path / "adapter" / "loraswitch_base.json").unlink()
    rc, _, err = run_cli(capsys, "merge", "--adapter", tmp_path / "adapter", "--out", tmp_path / "m")
    assert rc == 0 and err.count("\n") == 1
    assert err.startswith("warning: ") and "no loraswitch_base.json (an older adapter, or one written by peft)" in err


def test_existing_output_needs_overwrite_and_is_replaced_whole(run_dir, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "old.txt").write_text("old")
    rc, _, err = run_cli(capsys, "merge", run_dir, "--out", tmp_path / "m")
    assert rc == 2 and f"--out: {tmp_path / 'm'} exists; give --overwrite to replace it" in err
    rc, _, _ = run_cli(capsys, "merge", run_dir, "--out", tmp_path / "m", "--overwrite")
    assert rc == 0 and not (tmp_path / "m" / "old.txt").exists() and (tmp_path / "m" / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary or old copy left


def test_missing_gguf_package_gives_the_install_hint(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    rc, _, err = run_cli(capsys, "export", run_dir, "--format", "gguf", "--out", tmp_path / "m.gguf")
    assert (
        rc == 2
        and err
        == "error: export: writing GGUF needs the gguf package; install it with: pip install 'loraswitch[export]'\n"
    )


def test_help_of_merge_and_export(capsys):
    for command in ("merge", "export"):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0 and f"loraswitch {command}" in capsys.readouterr().out

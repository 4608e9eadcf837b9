"""``loraswitch bench``: the protocol's arithmetic, its refusals, and one real run on CPU.

The end-to-end test checks structure and that every system trained; it never checks speed
(CI machines are slow and shared, and speed is what the GPU table in docs/benchmarks.md is for).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from loraswitch.core import cli
from loraswitch.core.bench import protocol, report, runner
from loraswitch.core.bench.protocol import HF_COMPILE, HF_REFERENCE, BenchSettings, make_settings
from loraswitch.core.errors import UserError
from loraswitch.core.models.shapes import shape_config

# ---------------------------------------------------------------- protocol


def test_flops_per_token_matches_the_reference_anchor():
    """The anchor (shared/anchors/hf_peft_reference.py) counted llama-1b this way; MFU figures
    in docs/benchmarks.md (136k tokens/s at 790 TFLOP/s) depend on it."""
    c = shape_config("llama-1b")
    d, f, L, V = 2048, 8192, 16, 128256
    n = L * (d * d * 2 + 2 * d * 512 + 3 * d * f) + d * V
    assert protocol.matmul_params(c) == n
    fpt = protocol.flops_per_token(c, 2048)
    assert fpt == 4 * n + 12 * L * d * 2048
    assert 135_000 < 790e12 / fpt < 140_000


def test_synthetic_tokens_are_seeded_and_independent_of_order():
    s = make_settings(
        {"shape": "tiny", "batch_size": 2, "seq_len": 16, "accumulation_steps": 2, "steps": 2, "warmup_steps": 1}
    )
    a, b = protocol.synthetic_tokens(s, 512), protocol.synthetic_tokens(s, 512)
    assert a.shape == (6, 2, 16) and a.dtype == np.int32
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() < 512
    other = protocol.synthetic_tokens(s.model_copy(update={"seed": 1}), 512)
    assert not np.array_equal(a, other)
    # micro-batch i does not depend on how many there are
    longer = protocol.synthetic_tokens(s.model_copy(update={"steps": 5}), 512)
    np.testing.assert_array_equal(longer[:6], a)


def test_settings_refuse_bad_values_with_one_line():
    with pytest.raises(UserError, match=r"bench: --seq_len 4096 exceeds .*max_position_embeddings \(2048\)"):
        make_settings({"shape": "llama-1b", "seq_len": 4096})
    with pytest.raises(UserError, match=r"--batch_size = 0"):
        make_settings({"batch_size": 0})
    with pytest.raises(UserError, match=r"neither a random shape"):
        make_settings({"shape": "/no/such/dir"})
    with pytest.raises(UserError, match=r"--precision"):
        make_settings({"precision": "fp16"})
    with pytest.raises(UserError, match=r"--dropout_masks = 'random'"):
        make_settings({"dropout_masks": "random"})


def test_auto_precision_is_resolved_once_for_everyone(monkeypatch):
    monkeypatch.setattr(protocol, "gpu_visible", lambda: False)
    assert protocol.resolve_precision(BenchSettings()).precision == "fp32"
    monkeypatch.setattr(protocol, "gpu_visible", lambda: True)
    assert protocol.resolve_precision(BenchSettings()).precision == "bf16"
    assert protocol.resolve_precision(BenchSettings(precision="fp32")).precision == "fp32"


def test_systems_are_checked_and_per_system_settings_refused():
    known = {HF_REFERENCE: None, "torch": None, "jax": "needs jax"}
    assert runner.parse_systems(None, known) == [HF_REFERENCE, "torch", "jax"]
    assert runner.parse_systems("torch, hf-reference", known) == ["torch", HF_REFERENCE]
    with pytest.raises(UserError, match="per-system settings are not allowed"):
        runner.parse_systems("torch:compile=false,hf-reference", known)
    with pytest.raises(UserError, match="unknown system 'tf'; known: hf-reference, torch, jax"):
        runner.parse_systems("tf", known)
    with pytest.raises(UserError, match="twice"):
        runner.parse_systems("torch,torch", known)


def _ok(system, tps, loss, device_type="gpu", precision="bf16"):
    return {
        "system": system,
        "status": "ok",
        "tokens_per_s": tps,
        "loss": loss,
        "info": {"device_type": device_type, "precision": precision},
    }


def test_derive_ratio_mfu_and_loss_agreement():
    s = BenchSettings(shape="llama-1b", precision="bf16")
    results = [
        _ok(HF_REFERENCE, 34_600, 12.18),
        _ok("jax", 76_120, 12.19),
        _ok("torch", 60_000, 69.9),
        _ok("cpu-thing", 10, 12.18, device_type="cpu"),
        {"system": "x", "status": "failed", "error": "OOM"},
        _ok(HF_COMPILE, 50_600, 12.18),
    ]
    runner.derive(results, s)
    ref, jax_, torch_, cpu = results[:4]
    assert jax_["ratio_to_hf_compile"] == pytest.approx(76_120 / 50_600)
    assert cpu["ratio_to_hf_compile"] is None
    assert ref["ratio_to_hf_reference"] == 1.0
    assert jax_["ratio_to_hf_reference"] == pytest.approx(2.2)
    fpt = protocol.flops_per_token(shape_config("llama-1b"), 2048)
    assert jax_["mfu"] == pytest.approx(76_120 * fpt / 790e12)
    two = _ok("jax", 136_254, 12.19)
    two["devices"] = 2
    runner.derive([two], s)
    assert two["mfu"] == pytest.approx(136_254 / 2 * fpt / 790e12)  # per device: two devices' peak
    assert jax_["loss_matches_hf_reference"] is True
    assert torch_["loss_matches_hf_reference"] is False  # a fast wrong loss is flagged
    # a system on another kind of device is not compared, and gets no GPU MFU
    assert cpu["ratio_to_hf_reference"] is None and cpu["mfu"] is None
    assert runner.mismatches(results) == [
        "systems ran with different device_type: hf-reference=gpu, jax=gpu, torch=gpu, cpu-thing=cpu, hf-compile=gpu"
    ]


def test_failed_worker_is_reported_with_its_log_tail(tmp_path):
    r = runner.run_worker(
        "no-such-backend",
        BenchSettings(
            shape="tiny", seq_len=8, batch_size=1, steps=1, warmup_steps=0, accumulation_steps=1, precision="fp32"
        ),
        tmp_path / "w.log",
        timeout_s=120,
    )
    assert r["status"] == "failed" and "no-such-backend" in r["error"]
    assert (tmp_path / "w.log").read_text().strip()


# ---------------------------------------------------------------- one real run


@pytest.mark.parametrize("shape", ["tiny", "tiny-qwen3"])  # tiny-qwen3: the qwen3-* rows' code path
def test_bench_on_tiny_cpu_trains_every_system(shape, tmp_path, capsys, monkeypatch):
    """Every system on the tiny shape, the compiled peer and a warm-cache rerun included; the
    Qwen shape with the core systems only and every system recomputing activations (dots)."""
    # The compiled peer runs through torch.compile with the aot_eager backend: the same Dynamo and
    # AOTAutograd path, without inductor's C++ build (minutes on a 2-core CPU).
    monkeypatch.setenv("LORASWITCH_HF_COMPILE_BACKEND", "aot_eager")
    known = runner.available_systems()
    full = shape == "tiny"
    wanted = [HF_REFERENCE, HF_COMPILE, "torch", "jax"] if full else [HF_REFERENCE, "torch", "jax"]
    if full and "numpy" in known and known["numpy"] is None:
        wanted.append("numpy")
    for name in wanted:
        assert name in known and known[name] is None, f"{name}: {known.get(name)}"
    out = tmp_path / "bench"
    argv = ["--shape", shape, "--systems", ",".join(wanted), "--batch_size", "2", "--seq_len", "32",
            "--accumulation_steps", "2", "--steps", "2", "--warmup_steps", "1", "--precision", "fp32",
            "--out", str(out), *(["--warm_rerun"] if full else ["--gradient_checkpointing", "dots"])]  # fmt: skip
    assert cli.main(["bench", *argv]) == 0, capsys.readouterr()

    data = json.loads((out / "results.json").read_text())
    assert set(data) >= {"settings", "model", "machine", "created", "problems", "systems"}
    assert data["settings"]["shape"] == shape and data["settings"]["precision"] == "fp32"
    line = data["machine"]["command"]
    assert line[:2] == ["loraswitch", "bench"] and line[line.index("--shape") + 1] == shape
    assert data["machine"]["versions"]["numpy"]
    assert data["machine"]["environment"]["JAX_PLATFORMS"] == "cpu"  # set by conftest; switches are recorded
    assert data["problems"] == []
    assert [r["system"] for r in data["systems"]] == wanted
    losses = {}
    for r in data["systems"]:
        assert r["status"] == "ok", r
        assert r["tokens"] == 2 * 2 * 2 * 32 and r["tokens_per_s"] > 0 and r["steps_per_s"] > 0
        assert len(r["losses"]) == 3 and all(math.isfinite(x) for x in r["losses"])
        assert r["loss"] == r["losses"][-1] and r["loss_finite"]
        assert r["info"]["device_type"] == "cpu" and r["info"]["precision"] == "fp32"
        assert r["ratio_to_hf_reference"] > 0
        if full:
            assert r["ratio_to_hf_compile"] > 0
            assert r["warmup_warm_s"] > 0  # each system started a second time on the cache its first run filled
        assert (out / r["log"]).exists()
        if r["system"] != "numpy":  # the setting reaches every system; auto lets each choose (off on a CPU)
            assert r["info"]["gradient_checkpointing"] in (("off", "off (auto)") if full else ("dots",)), r["info"]
        losses[r["system"]] = r["loss"]
    if full:
        assert data["systems"][1]["info"]["compile"] is True
        assert data["machine"]["environment"]["LORASWITCH_HF_COMPILE_BACKEND"] == "aot_eager"
    # hf-reference, torch and jax load the same random:<shape> weights: on random tokens over a
    # 512-token vocabulary they all sit near ln(512) and agree with each other
    for system in wanted[:4]:
        assert abs(losses[system] - math.log(512)) < 0.1, (system, losses[system])
    for r in data["systems"]:
        if r["system"] in ("torch", "jax"):
            assert r["loss_matches_hf_reference"] is True, r
    # torch and jax share the initial adapter and (portable) dropout masks: the same losses, step by step
    assert data["settings"]["dropout_masks"] == "portable" and data["settings"]["lora_dropout"] > 0
    by_system = {r["system"]: r["losses"] for r in data["systems"]}
    assert by_system["torch"] == pytest.approx(by_system["jax"], rel=1e-5)
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert all(f"| {name} | ok |" in md for name in wanted)


def test_bench_cli_errors_are_one_line(capsys):
    assert cli.main(["bench", "--shape", "tiny", "--systems", "torch:compile=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bench: --systems") and "\n" not in err
    assert cli.main(["bench", "--shape", "llama-1b", "--seq_len", "9999"]) == 2
    assert "max_position_embeddings" in capsys.readouterr().err


def test_report_renders_skipped_and_failed_rows(tmp_path):
    s = BenchSettings(shape="tiny", precision="fp32")
    results = [
        _ok(HF_REFERENCE, 100.0, 6.2, "cpu", "fp32"),
        {"system": "jax", "status": "skipped", "error": "needs jax"},
    ]
    results[0].update(steps_per_s=1.0, warmup_s=0.5, peak_memory_bytes=None, losses=[6.2])
    runner.derive(results, s)
    rep = {
        "settings": s.model_dump(mode="json"),
        "model": {"name": s.model},
        "problems": [],
        "systems": results,
        "machine": {"gpu": None, "python": "3", "versions": {"numpy": "2"}, "command": ["loraswitch", "bench"]},
    }
    paths = report.write(rep, tmp_path)
    md = paths["markdown"].read_text()
    assert "| jax | skipped |" in md and "needs jax" in md
    assert json.loads(paths["json"].read_text())["systems"][1]["status"] == "skipped"


def test_scaling_mode_runs_each_backend_on_one_and_two_devices(tmp_path, capsys):
    """--devices 1,2: the same per-device micro-batch on 1 and 2 devices — jax on 2 forced CPU
    devices in one process, torch as 2 gloo processes under torchrun — with a scaling efficiency
    against each backend's own 1-device run; plain transformers + peft is single-device only."""
    out = tmp_path / "scaling"
    argv = ["--shape", "tiny", "--systems", "torch,jax", "--devices", "1,2", "--batch_size", "1",
            "--seq_len", "16", "--accumulation_steps", "1", "--steps", "1", "--warmup_steps", "1",
            "--precision", "fp32", "--out", str(out)]  # fmt: skip
    assert cli.main(["bench", *argv]) == 0, capsys.readouterr()
    data = json.loads((out / "results.json").read_text())
    assert data["scaling"] == {"devices": [1, 2], "mesh": "data"}
    by = {(r["system"], r["devices"]): r for r in data["systems"]}
    assert sorted(by) == sorted((s, n) for s in ("torch", "jax") for n in (1, 2))
    for system in ("torch", "jax"):
        one, two = by[system, 1], by[system, 2]
        assert one["status"] == two["status"] == "ok", (one, two)
        assert one["tokens"] == 16 and two["tokens"] == 32  # batch_size is per device
        assert one["scaling_efficiency"] == 1.0
        assert two["scaling_efficiency"] == pytest.approx(two["tokens_per_s"] / (2 * one["tokens_per_s"]))
        assert two["info"]["device_count"] == 2 and two["info"]["mesh"]["data"] == 2
        assert abs(two["loss"] - math.log(512)) < 0.1
    assert "scaling eff." in (out / "results.md").read_text()


def test_scaling_keeps_the_per_device_batch_and_plain_peers_on_one_device():
    from loraswitch.core.bench import scaling

    s = BenchSettings(shape="tiny", batch_size=3, precision="fp32")
    assert scaling.settings_for(s, 2).batch_size == 6 and scaling.settings_for(s, 1) == s
    assert scaling.unsupported(HF_REFERENCE, 2) and scaling.unsupported(HF_COMPILE, 1) is None
    assert scaling.parse_devices("1,2,4") == (1, 2, 4)
    for bad in ("2,1", "0", "1,1", "x"):
        with pytest.raises(UserError, match="--devices"):
            scaling.parse_devices(bad)
    results = [_ok("jax", 100.0, 6.2), dict(_ok("jax", 190.0, 6.2), devices=2), _ok(HF_REFERENCE, 50.0, 6.2)]
    results[0]["devices"] = 1
    runner.derive(results, BenchSettings(shape="tiny", precision="fp32"))
    scaling.derive_scaling(results)
    assert results[1]["scaling_efficiency"] == pytest.approx(0.95) and results[1]["tokens_per_s_per_device"] == 95.0
    assert results[1]["ratio_to_hf_reference"] is None  # 2 devices are not compared with 1
    assert results[0]["ratio_to_hf_reference"] == 2.0


# ---------------------------------------------------------------- real-length mode


def test_real_length_examples_are_shared_padded_for_hf_and_packed_for_backends():
    """One set of examples per step, laid out two ways: per micro-batch padding (transformers'
    collator) and packed rows; the same target tokens per step either way, pad excluded, and
    the packed micro-batches always of one shape, full but for the last row's tail."""
    from loraswitch.core.bench import lengths
    from loraswitch.core.bench.worker import windows_of

    s = BenchSettings(shape="tiny", lengths="lognormal:400:0.9:32:2048", seq_len=2048, steps=6, warmup_steps=2)
    n = lengths.example_lengths(s, 4000)
    assert n.min() >= 32 and n.max() <= 2048
    assert 300 < np.median(n) < 500  # the drawn median is near the asked one
    assert (lengths.example_lengths(s, 10) == n[:10]).all()  # a stream: longer draws extend it
    steps = lengths.step_examples(s, 512)
    assert [len(e.input_ids) for e in steps[1]] == n[len(steps[0]) : len(steps[0]) + len(steps[1])].tolist()
    padded, packed = windows_of(s, 512, padded=True), windows_of(s, 512, padded=False)
    assert len(padded) == len(packed) == 8
    for chunk, hf_window, packed_window in zip(steps, padded, packed):
        assert len(hf_window) == -(-len(chunk) // 4) and not any(b.packed for b in hf_window)
        assert all(b.input_ids.shape[1] == max(b.attention_mask.sum(axis=1)) for b in hf_window)  # own longest
        assert len(packed_window) == 4  # A micro-batches of B full rows, every step
        assert all(b.packed and b.input_ids.shape == (4, 2048) for b in packed_window)
        assert sum(b.n_targets for b in hf_window) == sum(b.n_targets for b in packed_window)
        # the step took every example that fit: the next one would have opened a 17th row
        assert sum(b.attention_mask.sum() for b in packed_window) > 0.9 * 16 * 2048
    from loraswitch.core.data.batching import padding_fraction

    flat_hf, flat_packed = [b for w in padded for b in w], [b for w in packed for b in w]
    assert padding_fraction(flat_hf) > 0.3 and padding_fraction(flat_packed) < 0.15
    with pytest.raises(UserError, match="--lengths"):
        make_settings({"shape": "tiny", "lengths": "normal:1:2"})


def test_bench_real_length_mode_on_cpu(tmp_path, capsys):
    """--lengths on CPU: every system trains on the same examples and reports real target
    tokens/s; the packed backends agree with each other step by step, and with hf-reference's
    padded loss per real token at the first step, before any update (random:tiny weights are
    shared; only the LoRA init differs, and B = 0 makes it irrelevant)."""
    out = tmp_path / "bench"
    wanted = [HF_REFERENCE, "torch", "jax"]
    argv = ["--shape", "tiny", "--systems", ",".join(wanted), "--batch_size", "2", "--seq_len", "64",
            "--accumulation_steps", "2", "--steps", "2", "--warmup_steps", "1", "--precision", "fp32",
            "--lora_dropout", "0", "--lengths", "lognormal:12:0.8:2:48", "--out", str(out)]  # fmt: skip
    assert cli.main(["bench", *argv]) == 0, capsys.readouterr()
    data = json.loads((out / "results.json").read_text())
    by = {r["system"]: r for r in data["systems"]}
    assert all(r["status"] == "ok" for r in by.values()), data["systems"]
    targets = {r["target_tokens"] for r in by.values()}
    assert len(targets) == 1 and targets.pop() > 0
    for r in by.values():
        assert r["target_tokens_per_s"] > 0 and r["tokens"] >= r["target_tokens"]
        assert r["ratio_to_hf_reference"] > 0
    assert by["torch"]["info"]["attention_packed"] and by["jax"]["info"]["attention_packed"]
    assert by["torch"]["losses"] == pytest.approx(by["jax"]["losses"], rel=1e-5)
    assert by["torch"]["losses"][0] == pytest.approx(by[HF_REFERENCE]["losses"][0], rel=1e-5)
    md = (out / "results.md").read_text()
    assert "real tokens/s" in md and "pad %" in md

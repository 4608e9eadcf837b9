"""The engine on the `numpy` backend (examples/loraswitch-numpy): windows and weights, every stop
reason, resume equivalence and the run directory. No torch or jax needed."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from helpers.run_metrics import metrics_lines

from loraswitch.core import hookimpl
from loraswitch.core.config import resolve
from loraswitch.core.errors import UserError
from loraswitch.core.plugins import get_plugin_manager
from loraswitch.core.rundir import checkpoints, layout
from loraswitch.core.training.engine import resume_config, train
from loraswitch.core.training.schedule import plan_epoch

pytest.importorskip("loraswitch_numpy", reason="pip install -e examples/loraswitch-numpy")


def write_data(path: Path, n: int = 30, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = (int(x) for x in rng.integers(0, 10, 2))
            f.write(json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) + "\n")
    return path


pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path / "train.jsonl")


def make_config(tmp_path: Path, data: Path, name: str = "run", **kw):
    values = dict(
        backend="numpy",
        model="random:tiny",
        data=str(data),
        output_dir=str(tmp_path / name),
        batch_size=2,
        accumulation_steps=3,
        n_steps=10,
        eval_every=3,
        save_every=4,
        learning_rate_multiplier=0.02,
        lora_r=4,
    )
    values.update(kw)
    return resolve(None, values, environ={})


def adapter_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "adapter").iterdir())}


class Recorder:
    """A plugin registering backend "recording": the numpy backend, logging every MicroStep
    and calling ``on_eval_batch(n)`` before its n-th eval batch."""

    def __init__(self, on_eval_batch=lambda n: None):
        self.micro = []
        self.eval_batches = 0
        self.on_eval_batch = on_eval_batch

    @hookimpl
    def register_backends(self, register):
        from loraswitch_numpy.backend import NumpyBackend

        recorder = self

        class Recording(NumpyBackend):
            name = "recording"

            def micro_step(self, micro):
                recorder.micro.append(micro)
                return super().micro_step(micro)

            def eval_loss(self, batch):
                recorder.eval_batches += 1
                recorder.on_eval_batch(recorder.eval_batches)
                return super().eval_loss(batch)

        register("recording", Recording)


class Hook:
    """A plugin calling ``action(step)`` after each step."""

    def __init__(self, action):
        self.action = action

    @hookimpl
    def on_step_end(self, run, metrics):
        self.action(metrics["step"])


# ---------------------------------------------------------------- windows and weights


def test_windows_weights_and_lr_reach_the_backend(tmp_path):
    data = write_data(tmp_path / "d.jsonl", n=29)  # 23 train examples: micro-batches 4,4,4,4,4,3 -> windows 4, 2
    rec = Recorder()
    get_plugin_manager().register(rec, name="recorder")
    config = make_config(
        tmp_path,
        data,
        backend="recording",
        n_epochs=2,
        n_steps=100,
        lr_schedule="linear",
        warmup_steps=2,
        batch_size=4,
        accumulation_steps=4,
    )
    summary = train(config, quiet=True)
    n_train = summary["n_train"]
    windows = plan_epoch(n_train, 4, 4)
    assert n_train == 23 and [len(w) for w in windows] == [4, 2]
    assert summary["stop_reason"] == "n_epochs" and summary["steps"] == 2 * len(windows)

    by_step: dict[int, list] = {}
    for m in rec.micro:
        by_step.setdefault(m.step, []).append(m)
    assert sorted(by_step) == list(range(summary["steps"]))
    for step, micros in by_step.items():
        window = windows[step % len(windows)]
        assert [m.micro for m in micros] == list(range(len(window)))
        assert [m.apply_update for m in micros] == [False] * (len(window) - 1) + [True]
        assert {m.window_size for m in micros} == {len(window)}
        # the weights make the loss a token mean over the whole window
        assert sum(m.weight * m.batch.n_targets for m in micros) == pytest.approx(1.0)
        assert len({m.weight for m in micros}) == 1
        shape = step / 2 if step < 2 else 1 - (step - 2) / (100 - 2)  # warmup 2, linear decay to step 100
        assert [m.lr for m in micros] == pytest.approx([config.learning_rate_multiplier * shape] * len(micros))
    # each epoch trains every example exactly once: count the real rows per epoch
    per_epoch = len(windows)
    for epoch in range(2):
        rows = sum(
            int((m.batch.attention_mask.sum(1) > 1).sum())
            for s in range(epoch * per_epoch, (epoch + 1) * per_epoch)
            for m in by_step[s]
        )
        assert rows == n_train


# ---------------------------------------------------------------- stop reasons and the run directory


def test_n_steps_run_directory(tmp_path, data):
    summary = train(make_config(tmp_path, data), quiet=True)
    run = tmp_path / "run"
    assert summary["stop_reason"] == "n_steps" and summary["steps"] == 10
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(summary))
    for key in (
        "final_eval_loss",
        "final_train_loss",
        "backend",
        "backend_description",
        "model",
        "n_train",
        "n_validation",
        "n_truncated",
        "epochs",
    ):
        assert summary[key] is not None, key
    assert set(summary["timings"]) == {"setup_s", "train_s", "total_s", "tokens_per_s"}
    # checkpoints at 8 (save_every 4) and 10 (the end); step 4 pruned (keep 2)
    assert [s for s, _ in checkpoints.complete_checkpoints(run)] == [8, 10]
    assert adapter_bytes(run) == {p.name: p.read_bytes() for p in (run / "checkpoints/step-000010/adapter").iterdir()}
    assert (run / "adapter" / "adapter_config.json").exists() and (
        run / "adapter" / "adapter_model.safetensors"
    ).exists()
    steps = [m for m in metrics_lines(run) if m["event"] == "step"]
    assert [m["step"] for m in steps] == list(range(1, 11))
    assert all(set(m) >= {"epoch", "loss", "lr", "tokens"} for m in steps)
    assert [m["step"] for m in metrics_lines(run, ("eval",))] == [3, 6, 9, 10]
    assert steps[-1]["loss"] < steps[0]["loss"]
    saved = layout.read_run_config(run)
    assert saved["lora_r"] == 4 and Path(saved["data"]).is_absolute()


def test_n_epochs(tmp_path, data):
    summary = train(make_config(tmp_path, data, n_epochs=2, n_steps=500), quiet=True)
    n = len(plan_epoch(summary["n_train"], 2, 3))
    assert summary["stop_reason"] == "n_epochs" and summary["steps"] == 2 * n and summary["epochs"] == 2.0


def test_stop_eval_loss(tmp_path, data):
    summary = train(make_config(tmp_path, data, stop_eval_loss=1e6, n_steps=50), quiet=True)
    assert summary["stop_reason"] == "stop_eval_loss" and summary["steps"] == 3  # the first eval
    assert checkpoints.latest_complete_checkpoint(tmp_path / "run").name == "step-000003"


def test_non_finite_loss_keeps_last_good_checkpoint(tmp_path, data, monkeypatch):
    monkeypatch.setenv("LORASWITCH_NUMPY_NAN_AT_STEP", "6")
    summary = train(make_config(tmp_path, data, save_every=2), quiet=True)
    run = tmp_path / "run"
    assert summary["stop_reason"] == "non_finite_loss"
    assert summary["steps"] == 5 and summary["non_finite_step"] == 6 and summary["adapter_step"] == 4
    assert [s for s, _ in checkpoints.complete_checkpoints(run)] == [2, 4]
    assert adapter_bytes(run) == {p.name: p.read_bytes() for p in (run / "checkpoints/step-000004/adapter").iterdir()}
    assert max(m["step"] for m in metrics_lines(run)) == 5  # the bad step wrote no metrics


def test_interrupt_checkpoints_the_last_step_and_resume_matches(tmp_path, data):
    """A SIGINT mid-run stops at the window boundary with a checkpoint; resuming ends in the
    same adapter bytes and step/eval metrics as a run that never stopped."""
    kw = dict(n_steps=14, lr_schedule="cosine", warmup_steps=3, lora_dropout=0.1)
    full = train(make_config(tmp_path, data, "full", **kw), quiet=True)

    get_plugin_manager().register(Hook(lambda s: s == 7 and os.kill(os.getpid(), signal.SIGINT)), name="ctrl-c")
    part = train(make_config(tmp_path, data, "part", **kw), quiet=True)
    run = tmp_path / "part"
    assert part["stop_reason"] == "interrupted" and part["signal"] == "SIGINT" and part["steps"] == 7
    assert checkpoints.latest_complete_checkpoint(run).name == "step-000007"
    get_plugin_manager().unregister(name="ctrl-c")

    resumed = train(resume_config(run), resume=True, quiet=True)
    assert resumed["stop_reason"] == "n_steps" and resumed["steps"] == 14
    assert adapter_bytes(run) == adapter_bytes(tmp_path / "full")
    assert metrics_lines(run) == metrics_lines(tmp_path / "full")
    assert resumed["final_eval_loss"] == full["final_eval_loss"]


def test_interrupt_during_eval_is_evaluated_again_on_resume(tmp_path, data):
    """SIGINT in the middle of the eval of step 6: the eval is abandoned, step 6 is
    checkpointed, and the resumed run evaluates step 6 first, as the uninterrupted run did."""
    kw = dict(backend="recording", n_steps=9, lora_dropout=0.1)
    get_plugin_manager().register(Recorder(), name="recorder")
    train(make_config(tmp_path, data, "full", **kw), quiet=True)
    get_plugin_manager().unregister(name="recorder")

    # 6 validation examples / batch_size 2 = 3 eval batches per eval; evals at steps 3 and 6
    get_plugin_manager().register(Recorder(lambda n: n == 5 and os.kill(os.getpid(), signal.SIGINT)), name="recorder")
    part = train(make_config(tmp_path, data, "part", **kw), quiet=True)
    run = tmp_path / "part"
    assert (part["stop_reason"], part["steps"], part["eval_step"]) == ("interrupted", 6, 3)
    assert [m["step"] for m in metrics_lines(run, ("eval",))] == [3]

    resumed = train(resume_config(run), resume=True, quiet=True)
    assert resumed["steps"] == 9
    assert metrics_lines(run) == metrics_lines(tmp_path / "full")
    assert adapter_bytes(run) == adapter_bytes(tmp_path / "full")


def test_crash_then_resume_ignores_a_killed_writers_leftovers(tmp_path, data):
    """A crash (here: a plugin raising after step 9) leaves checkpoint 8, a half-written tmp dir
    (all a killed checkpoint writer can leave) and a torn metrics line; resume uses step 8."""
    kw = dict(n_steps=13, lora_dropout=0.1)
    train(make_config(tmp_path, data, "full", **kw), quiet=True)
    crash_at_step_9(tmp_path, data, kw)
    run = tmp_path / "part"
    (run / "checkpoints" / ".tmp-step-000012").mkdir()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"event": "step", "st')
    assert checkpoints.latest_complete_checkpoint(run).name == "step-000008"

    resumed = train(resume_config(run), resume=True, quiet=True)
    assert resumed["steps"] == 13
    assert adapter_bytes(run) == adapter_bytes(tmp_path / "full")
    assert metrics_lines(run) == metrics_lines(tmp_path / "full")
    assert not (run / "checkpoints" / ".tmp-step-000012").exists()


def crash_at_step_9(tmp_path, data, kw):
    def crash(step):
        if step == 9:
            raise RuntimeError("simulated crash")

    get_plugin_manager().register(Hook(crash), name="crasher")
    with pytest.raises(UserError, match='plugin "crasher"'):
        train(make_config(tmp_path, data, "part", **kw), quiet=True)
    get_plugin_manager().unregister(name="crasher")


def test_a_checkpoint_without_its_manifest_is_damaged_never_skipped(tmp_path, data, capsys):
    """A step directory without trainer_state.json was damaged after it was written (a killed
    writer leaves only .tmp-step-*): --resume names it and changes nothing; --resume_from the
    older checkpoint continues deliberately, setting the damaged one aside, and ends equal to
    a run that never stopped."""
    kw = dict(n_steps=13, lora_dropout=0.1)
    train(make_config(tmp_path, data, "full", **kw), quiet=True)
    crash_at_step_9(tmp_path, data, kw)
    run = tmp_path / "part"
    damaged = run / "checkpoints" / "step-000011"
    shutil.copytree(run / "checkpoints" / "step-000008", damaged)
    (damaged / "trainer_state.json").unlink()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UserError) as e:
        train(resume_config(run), resume=True, quiet=True)
    assert str(e.value) == (
        f"{damaged}/trainer_state.json: missing; checkpoint {damaged} is damaged; "
        "to resume from the newest complete one instead, add --resume_from step-000008"
    )
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    resumed = train(resume_config(run), resume=True, resume_from="step-000008", quiet=False)
    assert f"set step-000011 aside as {run / 'checkpoints' / 'set-aside-step-000011'}" in capsys.readouterr().err
    assert resumed["steps"] == 13
    assert adapter_bytes(run) == adapter_bytes(tmp_path / "full")
    assert metrics_lines(run) == metrics_lines(tmp_path / "full")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "set-aside-step-000011",
        "step-000012",
        "step-000013",
    ]


@pytest.mark.parametrize(
    "resume_from,message",
    [
        (
            "step-000003",
            r"--resume_from step-000003: no such checkpoint in .* \(complete ones: step-000002, step-000004\)",
        ),
        ("banana", "--resume_from banana: no such checkpoint"),
    ],
)
def test_resume_from_names_an_existing_checkpoint(tmp_path, data, resume_from, message):
    train(make_config(tmp_path, data, n_steps=4, save_every=2), quiet=True)
    with pytest.raises(UserError, match=message):
        train(resume_config(tmp_path / "run"), resume=True, resume_from=resume_from, quiet=True)


def test_resume_from_needs_resume(tmp_path, data):
    with pytest.raises(UserError, match="--resume_from needs --resume RUN_DIR"):
        train(make_config(tmp_path, data), resume_from="step-000002", quiet=True)


def test_resume_can_extend_n_steps_and_says_what_else_is_ignored(tmp_path, data, capsys):
    train(make_config(tmp_path, data, n_steps=4), quiet=True)
    config = resume_config(tmp_path / "run", {"n_steps": 6, "lora_r": 8, "output_dir": "elsewhere"})
    err = capsys.readouterr().err
    assert "config.yaml wins for lora_r" in err and err.count("\n") == 1
    assert config.n_steps == 6 and config.lora_r == 4 and config.output_dir == str(tmp_path / "run")
    summary = train(config, resume=True, quiet=True)
    assert summary["steps"] == 6
    assert [m["step"] for m in metrics_lines(tmp_path / "run", ("step",))] == [1, 2, 3, 4, 5, 6]


def test_existing_run_is_never_overwritten_without_a_flag(tmp_path, data):
    config = make_config(tmp_path, data, n_steps=2)
    train(config, quiet=True)
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="--resume"):
        train(config, quiet=True)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    summary = train(make_config(tmp_path, data, n_steps=3, save_every=1), overwrite=True, quiet=True)
    assert summary["steps"] == 3 and [s for s, _ in checkpoints.complete_checkpoints(run)] == [2, 3]


def test_bad_data_leaves_the_old_run_untouched(tmp_path, data):
    config = make_config(tmp_path, data, n_steps=2)
    train(config, quiet=True)
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": oops}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2"):
        train(make_config(tmp_path, bad, n_steps=2), overwrite=True, quiet=True)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_refuses_changed_data(tmp_path, data):
    train(make_config(tmp_path, data, n_steps=4), quiet=True)
    write_data(data, seed=1)
    with pytest.raises(UserError, match="data files changed"):
        train(resume_config(tmp_path / "run", {"n_steps": 6}), resume=True, quiet=True)


def test_damaged_checkpoint_is_named(tmp_path, data):
    train(make_config(tmp_path, data, n_steps=4), quiet=True)
    tensors = tmp_path / "run/checkpoints/step-000004/adapter/adapter_model.safetensors"
    raw = bytearray(tensors.read_bytes())
    raw[-1] ^= 0xFF  # same size, different bytes
    tensors.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="adapter_model.safetensors: checksum differs"):
        train(resume_config(tmp_path / "run", {"n_steps": 6}), resume=True, quiet=True)


def test_packing_trains_on_packed_rows(tmp_path, data):
    """packing: the engine trains on pack(train examples): fewer, fuller rows, every target
    token still trained once per epoch."""
    from loraswitch.core.data.batching import pack
    from loraswitch.core.data.chat_tokenizer import ChatTokenizer
    from loraswitch.core.data.dataset import load_datasets
    from loraswitch.core.models.sources import resolve_model

    rec = Recorder()
    get_plugin_manager().register(rec, name="recorder")
    config = make_config(tmp_path, data, backend="recording", packing=True, max_seq_len=64, n_epochs=1, n_steps=100)
    summary = train(config, quiet=True)
    examples = load_datasets(config, ChatTokenizer.from_dir(resolve_model("random:tiny").path)).train
    rows = pack(examples, 64)
    assert len(rows) < len(examples) == summary["n_train"] == 24
    assert summary["steps"] == len(plan_epoch(len(rows), 2, 3))
    trained_rows = [row for m in rec.micro for row in m.batch.attention_mask if row.sum() > 1]
    assert len(trained_rows) == len(rows)
    assert sum(m.batch.n_targets for m in rec.micro) == sum(e.n_targets for e in examples)


def test_group_by_length_batches_similar_lengths_and_resume_matches(tmp_path):
    """group_by_length: micro-batches pad less than with the plain shuffle (same examples per
    epoch), and a run stopped mid-epoch and resumed recomputes the grouped order exactly: same
    adapter bytes and metrics as an uninterrupted run."""
    data = tmp_path / "varied.jsonl"
    rng = np.random.default_rng(2)
    with open(data, "w") as f:
        for i in range(40):
            f.write(json.dumps({"prompt": f"q{i} " + "x" * int(rng.integers(1, 120)), "completion": "y"}) + "\n")
    kw = dict(n_steps=9, eval_every=4, save_every=100, group_by_length=True, pad_to_multiple_of=8, batch_size=4)
    padded = {}
    for grouped in (False, True):
        rec = Recorder()
        get_plugin_manager().register(rec, name="recorder")
        train(
            make_config(tmp_path, data, f"widths-{grouped}", backend="recording", **{**kw, "group_by_length": grouped}),
            quiet=True,
        )
        get_plugin_manager().unregister(name="recorder")
        padded[grouped] = sum(m.batch.input_ids.size - m.batch.n_tokens for m in rec.micro)
        assert all(m.batch.input_ids.shape[1] % 8 == 0 for m in rec.micro)
    assert padded[True] < 0.5 * padded[False]

    train(make_config(tmp_path, data, "full", **kw), quiet=True)
    get_plugin_manager().register(Hook(lambda s: s == 5 and os.kill(os.getpid(), signal.SIGINT)), name="ctrl-c")
    part = train(make_config(tmp_path, data, "part", **kw), quiet=True)
    get_plugin_manager().unregister(name="ctrl-c")
    assert part["stop_reason"] == "interrupted" and part["steps"] == 5
    train(resume_config(tmp_path / "part"), resume=True, quiet=True)
    assert adapter_bytes(tmp_path / "part") == adapter_bytes(tmp_path / "full")
    assert metrics_lines(tmp_path / "part") == metrics_lines(tmp_path / "full")


def test_eval_batches_caps_each_eval(tmp_path, data):
    """6 validation examples in batches of 2: 3 eval batches, or eval_batches of them; evals at
    steps 3, 6, 9 and 10."""
    for cap, per_eval in ((None, 3), (1, 1), (2, 2)):
        rec = Recorder()
        get_plugin_manager().register(rec, name="recorder")
        train(make_config(tmp_path, data, f"run-{cap}", backend="recording", eval_batches=cap), quiet=True)
        get_plugin_manager().unregister(name="recorder")
        assert rec.eval_batches == 4 * per_eval, cap


class ConstantEval:
    """Backend "constant-eval": the numpy backend whose eval loss is exactly 0.5 per token."""

    @hookimpl
    def register_backends(self, register):
        from loraswitch_numpy.backend import NumpyBackend

        class ConstantEvalBackend(NumpyBackend):
            name = "constant-eval"

            def eval_loss(self, batch):
                _, n = super().eval_loss(batch)
                return 0.5 * n, n

        register("constant-eval", ConstantEvalBackend)


@pytest.mark.parametrize("threshold,stops", [(0.5, False), (0.5000001, True)])
def test_stop_eval_loss_means_strictly_below(tmp_path, data, threshold, stops):
    get_plugin_manager().register(ConstantEval(), name="constant-eval")
    summary = train(
        make_config(tmp_path, data, backend="constant-eval", stop_eval_loss=threshold, n_steps=7), quiet=True
    )
    assert summary["final_eval_loss"] == 0.5
    assert (summary["stop_reason"], summary["steps"]) == (("stop_eval_loss", 3) if stops else ("n_steps", 7))


def test_unwritable_output_dir(tmp_path, data):
    if os.geteuid() == 0:
        parent = Path("/proc")  # root may write anywhere else; nobody can create files in /proc
    else:
        parent = tmp_path / "locked"
        parent.mkdir()
        parent.chmod(0o500)
    try:
        with pytest.raises(UserError, match="cannot write in /"):
            train(make_config(tmp_path, data, output_dir=str(parent / "lsw-run")), quiet=True)
    finally:
        if parent != Path("/proc"):
            parent.chmod(0o700)


def test_full_disk_is_refused_before_training(tmp_path, data, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserError, match="MiB free"):
        train(make_config(tmp_path, data), quiet=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "edit,message",
    [
        ({"model": "random:other"}, "checkpoint was written by model 'random:other'"),
        ({"epoch": "one"}, "epoch = 'one': must be a non-negative integer"),
        ({"window": 99}, "window = 99"),
    ],
)
def test_edited_trainer_state_is_named(tmp_path, data, edit, message):
    train(make_config(tmp_path, data, n_steps=4), quiet=True)
    path = tmp_path / "run/checkpoints/step-000004/trainer_state.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **edit)))
    with pytest.raises(UserError, match="trainer_state.json: " + message):
        train(resume_config(tmp_path / "run", {"n_steps": 6}), resume=True, quiet=True)

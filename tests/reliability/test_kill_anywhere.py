"""Kill anywhere, resume, end where an uninterrupted run ends.

Each test starts real `loraswitch train` processes. LORASWITCH_TEST_KILL_AT (core/training/kill_points.py)
makes a process SIGKILL itself at a named instant -- between two micro-steps of a window, after
an update but before its metrics line, between eval batches, between two files of a
checkpoint, while the final adapter is swapped in -- so every run of the suite kills at the same
places. After each kill the test checks what a user would rely on:

- every complete checkpoint left behind verifies (sha256) and loads, and the latest one is the
  newest checkpoint that had finished before the kill (a half-written one is never picked);
- `loraswitch train --resume RUN_DIR` starts from exactly that checkpoint and finishes;
- the final adapter tensors, the step/eval metrics (loss, lr, tokens, epoch, eval loss; not
  timings) and the summary equal those of a run that was never interrupted.

The numpy backend (examples/loraswitch-numpy) is killed at many points, one process pair each.
torch and jax, whose processes take seconds to import their framework, get one chain each: a
fresh run SIGKILLed in the middle of a checkpoint, resumed and stopped cleanly by SIGTERM (torch)
or SIGINT (jax) mid-step, resumed and SIGKILLed mid-step (half a window accumulated inside the
framework's optimizer), resumed to the end. Subprocesses run single-threaded, and the jax ones
share a compilation cache, to keep this file near two minutes on two cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.run_metrics import metrics_lines

from loraswitch.core.rundir import checkpoints

pytest.importorskip("loraswitch_numpy", reason="pip install -e examples/loraswitch-numpy")

EXE = Path(sys.executable).parent / "loraswitch"
SUMMARY_KEYS = (
    "stop_reason",
    "steps",
    "epochs",
    "final_eval_loss",
    "final_train_loss",
    "eval_step",
    "adapter_step",
    "tokens",
    "n_train",
    "n_validation",
)

# numpy: 16 train / 4 validation records, batch 2 x accumulation 2 -> 4 steps an epoch, 2 epochs;
# evals (2 batches each) at 3, 6 and 8; checkpoints at 2, 4, 6, 8 (the last two kept).
NUMPY_RUN = dict(n_records=20, n_steps=8, eval_every=3, save_every=2, learning_rate_multiplier=0.02)
# torch / jax: 8 train / 2 validation records -> 2 steps an epoch; 5 steps (the last epoch cut
# short by n_steps); evals at 2, 4, 5; checkpoints at 2, 4, 5.
FRAMEWORK_RUN = dict(n_records=10, n_steps=5, eval_every=2, save_every=2, learning_rate_multiplier=0.01)


# ---------------------------------------------------------------- helpers


def write_run(tmp: Path, backend: str, n_records: int, **kw) -> Path:
    """A data file and a config file in ``tmp``; returns the config path (output_dir tmp/run)."""
    with open(tmp / "train.jsonl", "w") as f:
        for i in range(n_records):
            f.write(json.dumps({"prompt": f"{i}+{i % 7}=", "completion": str(i + i % 7)}) + "\n")
    values = dict(
        backend=backend,
        model="random:tiny",
        data="train.jsonl",
        output_dir=str(tmp / "run"),
        batch_size=2,
        accumulation_steps=2,
        lora_r=4,
        lora_dropout=0.1,
        lr_schedule="cosine",
        warmup_steps=2,
        precision="fp32",
        max_seq_len=64,
        **kw,
    )
    path = tmp / "config.json"  # JSON is valid YAML
    path.write_text(json.dumps(values))
    return path


def env(kill_at: str | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("LORASWITCH_")}
    out.update(
        LORASWITCH_CACHE=os.environ["LORASWITCH_CACHE"],
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
        # One thread: on a shared 2-core machine, BLAS/Eigen thread pools spin against each
        # other (a tiny torch step took 3x longer); every process uses the same setting.
        OMP_NUM_THREADS="1",
        XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        # Later jax processes reuse the reference run's compiled steps (the same programs).
        JAX_COMPILATION_CACHE_DIR=os.environ["LORASWITCH_CACHE"] + "-jax",
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
    if kill_at:
        out["LORASWITCH_TEST_KILL_AT"] = kill_at
    return out


def loraswitch(
    *args, kill_at: str | None = None, cwd: Path, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EXE), *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(env(kill_at), **(extra_env or {})),
        cwd=cwd,
        timeout=300,
    )


def last_start_step(run: Path) -> int:
    """The step the latest session started from (the metrics writer's "start" event)."""
    return metrics_lines(run, ("start",))[-1]["step"]


def adapter(directory: Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors.numpy import load_file

    return (
        load_file(str(directory / "adapter_model.safetensors")),
        json.loads((directory / "adapter_config.json").read_text()),
    )


def assert_same_run(run: Path, reference: Path) -> None:
    tensors, config = adapter(run / "adapter")
    ref_tensors, ref_config = adapter(reference / "adapter")
    assert config == ref_config
    assert sorted(tensors) == sorted(ref_tensors)
    for name in tensors:
        assert tensors[name].dtype == ref_tensors[name].dtype and np.array_equal(tensors[name], ref_tensors[name]), name
    assert metrics_lines(run) == metrics_lines(reference)
    summary, ref_summary = (json.loads((r / "summary.json").read_text()) for r in (run, reference))
    assert {k: summary[k] for k in SUMMARY_KEYS} == {k: ref_summary[k] for k in SUMMARY_KEYS}


def check_after_kill(run: Path, proc: subprocess.CompletedProcess, expect_latest: int | None, load=None) -> None:
    """The process died by SIGKILL; every complete checkpoint verifies and loads; the latest
    one is ``expect_latest``; no summary claims the run ended."""
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (run / "summary.json").exists()
    complete = checkpoints.complete_checkpoints(run)
    for step, path in complete:
        state = checkpoints.verify_checkpoint(path)
        assert state["step"] == step
        if load is not None:
            load(run, path)
    latest = checkpoints.latest_complete_checkpoint(run)
    assert (checkpoints.read_trainer_state(latest)["step"] if latest else None) == expect_latest


def load_numpy_checkpoint(run: Path, checkpoint: Path) -> None:
    """Load a checkpoint as --resume would: adapter and optimizer state into a numpy backend."""
    from loraswitch.core.models.sources import resolve_model
    from loraswitch.core.training.engine import resume_config
    from loraswitch_numpy.backend import NumpyBackend

    config = resume_config(run, quiet=True)
    backend = NumpyBackend()
    backend.load(resolve_model(config.model), config)
    backend.load_adapter(checkpoint / "adapter")
    backend.load_state(checkpoint / "backend_state")


def load_tensors_only(run: Path, checkpoint: Path) -> None:
    from safetensors.numpy import load_file

    for f in checkpoint.rglob("*.safetensors"):
        assert load_file(str(f))


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    """One model cache for the module (random:tiny is written once), no LORASWITCH_* leaking in."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("LORASWITCH_")]:
        del os.environ[key]
    os.environ["LORASWITCH_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    from loraswitch.core.plugins import reset_plugin_manager

    reset_plugin_manager()
    yield
    os.environ.clear()
    os.environ.update(saved)
    reset_plugin_manager()


def reference_run(tmp: Path, backend: str, spec: dict) -> Path:
    config = write_run(tmp, backend, **spec)
    proc = loraswitch("train", config, "--quiet", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    assert summary["stop_reason"] == "n_steps" and summary["steps"] == spec["n_steps"]
    return tmp / "run"


# ---------------------------------------------------------------- numpy: many kill points


@pytest.fixture(scope="module")
def numpy_reference(tmp_path_factory):
    return reference_run(tmp_path_factory.mktemp("numpy-reference"), "numpy", NUMPY_RUN)


# (kill point, the latest complete checkpoint after the kill: where --resume must start)
NUMPY_KILLS = [
    ("step:1:micro:0", None),  # before anything was trained: resume starts from scratch
    ("step:1:micro:1", None),  # mid-window of the first step
    ("step:3:micro:1", 2),  # mid-window, half the gradients accumulated
    ("step:5:applied", 4),  # update applied in memory, not yet recorded (first step of epoch 2)
    ("step:4:applied", 2),  # the last step of an epoch
    ("eval:3:batch:1", 2),  # mid-eval
    ("eval:6:batch:0", 4),  # before the eval that precedes checkpoint 6
    ("checkpoint:2:adapter", None),  # the first checkpoint, half written
    ("checkpoint:4:adapter", 2),  # between the adapter and the optimizer state
    ("checkpoint:4:files", 2),  # every file but trainer_state.json
    ("checkpoint:6:complete", 6),  # renamed into place, older ones not yet pruned
    ("checkpoint:8:files", 6),  # the final checkpoint, half written
    ("replace:adapter", 8),  # the old final adapter moved aside, the new one not yet in place
    ("final:summary", 8),  # everything but summary.json
]


@pytest.mark.parametrize("kill_at,latest", NUMPY_KILLS, ids=[k for k, _ in NUMPY_KILLS])
def test_numpy_killed_then_resumed_matches_uninterrupted(kill_at, latest, tmp_path, numpy_reference):
    config = write_run(tmp_path, "numpy", **NUMPY_RUN)
    run = tmp_path / "run"
    proc = loraswitch("train", config, "--quiet", kill_at=kill_at, cwd=tmp_path)
    check_after_kill(run, proc, latest, load_numpy_checkpoint)
    if kill_at == "replace:adapter":  # killed in the one instant without an adapter/ directory
        assert not (run / "adapter").exists() and any(run.glob(".adapter.tmp-*"))

    proc = loraswitch("train", "--resume", run, "--quiet", cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert last_start_step(run) == (latest or 0)
    assert_same_run(run, numpy_reference)
    assert not list(run.glob(".*.tmp-*")) and not list((run / "checkpoints").glob(".*"))  # leftovers cleaned


def test_numpy_killed_three_times_in_one_run(tmp_path, numpy_reference):
    """Resume of a resume: kills in three successive sessions, then the run completes."""
    config = write_run(tmp_path, "numpy", **NUMPY_RUN)
    run = tmp_path / "run"
    check_after_kill(run, loraswitch("train", config, "--quiet", kill_at="step:3:micro:1", cwd=tmp_path), 2)
    check_after_kill(
        run, loraswitch("train", "--resume", run, "--quiet", kill_at="checkpoint:6:adapter", cwd=tmp_path), 4
    )
    assert last_start_step(run) == 2
    check_after_kill(run, loraswitch("train", "--resume", run, "--quiet", kill_at="eval:8:batch:1", cwd=tmp_path), 6)
    assert last_start_step(run) == 4
    proc = loraswitch("train", "--resume", run, "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert last_start_step(run) == 6
    assert_same_run(run, numpy_reference)


def test_resume_of_a_finished_run_changes_nothing(tmp_path, numpy_reference):
    """--resume on a run that already ended: same adapter, same metrics, nothing retrained."""
    run = tmp_path / "again"
    shutil.copytree(numpy_reference, run)
    before = metrics_lines(run)
    proc = loraswitch("train", "--resume", run, "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert metrics_lines(run) == before
    assert_same_run(run, numpy_reference)


def test_non_finite_loss_keeps_a_resumable_checkpoint(tmp_path, numpy_reference):
    """A NaN loss at step 6 ends the run (exit 1, reason non_finite_loss); adapter/ is the last
    good checkpoint's (step 4), which verifies; resumed once the cause is gone (here: the
    numpy backend's NaN switch unset), the run ends exactly where an uninterrupted one does."""
    config = write_run(tmp_path, "numpy", **NUMPY_RUN)
    run = tmp_path / "run"
    proc = loraswitch("train", config, "--quiet", cwd=tmp_path, extra_env={"LORASWITCH_NUMPY_NAN_AT_STEP": "6"})
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "non-finite" in proc.stderr, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["stop_reason"], summary["steps"], summary["adapter_step"]) == ("non_finite_loss", 5, 4)
    latest = checkpoints.latest_complete_checkpoint(run)
    assert checkpoints.verify_checkpoint(latest)["step"] == 4
    load_numpy_checkpoint(run, latest)
    assert adapter(run / "adapter")[1] == adapter(latest / "adapter")[1]
    assert {k: v.tobytes() for k, v in adapter(run / "adapter")[0].items()} == {
        k: v.tobytes() for k, v in adapter(latest / "adapter")[0].items()
    }

    proc = loraswitch("train", "--resume", run, "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert last_start_step(run) == 4
    assert_same_run(run, numpy_reference)


# ---------------------------------------------------------------- torch and jax: one chain each


# (backend, the signal that stops the second session cleanly)
FRAMEWORKS = [("torch", "SIGTERM"), ("jax", "SIGINT")]


@pytest.mark.parametrize("backend,clean_signal", FRAMEWORKS, ids=[b for b, _ in FRAMEWORKS])
def test_framework_killed_stopped_killed_then_resumed_matches_uninterrupted(backend, clean_signal, tmp_path):
    pytest.importorskip({"torch": "peft", "jax": "flax"}[backend])
    (tmp_path / "reference").mkdir()
    (tmp_path / "work").mkdir()
    reference = reference_run(tmp_path / "reference", backend, FRAMEWORK_RUN)
    work = tmp_path / "work"
    config = write_run(work, backend, **FRAMEWORK_RUN)
    run = work / "run"

    # 1. SIGKILL between the adapter and the optimizer state of checkpoint 4: checkpoint 2 survives
    check_after_kill(
        run, loraswitch("train", config, "--quiet", kill_at="checkpoint:4:adapter", cwd=work), 2, load_tensors_only
    )

    # 2. a Ctrl-C / SIGTERM in the middle of step 3: the step finishes, is checkpointed, exit 128+signum
    proc = loraswitch("train", "--resume", run, kill_at=f"step:3:micro:1@{clean_signal}", cwd=work)
    assert proc.returncode == {"SIGINT": 130, "SIGTERM": 143}[clean_signal], proc.stderr
    assert "Traceback" not in proc.stderr and f"loraswitch train --resume {run}" in proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["stop_reason"], summary["steps"], summary["signal"]) == ("interrupted", 3, clean_signal)
    assert checkpoints.read_trainer_state(checkpoints.latest_complete_checkpoint(run))["step"] == 3
    assert last_start_step(run) == 2

    # 3. SIGKILL mid-step: half of step 5's gradients accumulated (4 is the latest checkpoint)
    (run / "summary.json").unlink()  # the interrupted session's; check_after_kill wants none written since
    check_after_kill(
        run, loraswitch("train", "--resume", run, "--quiet", kill_at="step:5:micro:1", cwd=work), 4, load_tensors_only
    )
    assert last_start_step(run) == 3

    # 4. resume to the end: same adapter and metrics as the run that never stopped
    proc = loraswitch("train", "--resume", run, "--quiet", cwd=work)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert last_start_step(run) == 4
    assert_same_run(run, reference)
    # the backend's checkpoints hold data formats only: safetensors and JSON, never pickle
    assert {p.suffix for p in (run / "checkpoints").rglob("*") if p.is_file()} <= {".safetensors", ".json"}

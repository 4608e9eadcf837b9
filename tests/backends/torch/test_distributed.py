"""The torch backend on 2 CPU processes (torchrun, gloo) trains exactly as on one process.

Run: .venv/bin/pytest tests/backends/torch/test_distributed.py -q   (about 30 s on 2 cores)

A tiny random Llama in fp32 with dropout 0.1 (portable masks: the same whatever the process
count); the same run on 1 process, on 2 under DDP, and on 2 under FSDP2 (base weights sharded),
resumed from that 2-process checkpoint on 1 process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers.distributed_runs import N_STEPS, assert_same_adapter, assert_same_losses, losses, write_setup  # noqa: E402

from loraswitch.core.config import resolve  # noqa: E402
from loraswitch.core.errors import UserError  # noqa: E402
from loraswitch.core.training.engine import resume_config, train  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Model, data and config.yaml, written once for the module."""
    return write_setup(tmp_path_factory.mktemp("dist"), "torch", compile="false")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the children get OMP_NUM_THREADS=1: the same summation order
    yield
    torch.set_num_threads(threads)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORASWITCH_")}
    env["OMP_NUM_THREADS"] = "1"
    env.pop("WORLD_SIZE", None), env.pop("RANK", None), env.pop("LOCAL_RANK", None)
    return env


def torchrun(setup: Path, run_dir: Path, *overrides: str) -> None:
    """``torchrun --standalone --nproc_per_node 2 -m loraswitch.core.cli train`` (a free port)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "loraswitch.core.cli",
        "train",
        str(setup / "config.yaml"),
        "--output_dir",
        str(run_dir),
        *overrides,
    ]
    done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """The single-process run, in this process."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    config = resolve(str(setup / "config.yaml"), {"output_dir": str(run_dir)}, environ={})
    summary = train(config, quiet=True)
    assert summary["steps"] == N_STEPS
    return run_dir


def test_ddp_two_processes_match_one(setup, reference, tmp_path):
    run_dir = tmp_path / "ddp"
    torchrun(setup, run_dir)
    assert_same_losses(losses(run_dir), losses(reference))
    assert_same_adapter(run_dir / "adapter", reference / "adapter")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["backend_description"]["processes"] == 2
    assert summary["backend_description"]["parallel"] == "ddp x2"
    # one writer: every metrics line once, complete checkpoints and nothing half-written left
    assert [r["event"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())].count(
        "start"
    ) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


def test_fsdp_checkpoint_resumes_on_one_process(setup, reference, tmp_path):
    """Steps 1-2 on 2 processes with sharded base weights, steps 3-4 resumed on 1 process:
    the same losses and adapter as the run that never left one process."""
    run_dir = tmp_path / "fsdp"
    torchrun(setup, run_dir, "--mesh", "{fsdp: 2}", "--n_steps", "2")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["backend_description"]["parallel"] == "fsdp x2"
    assert_same_losses(losses(run_dir), [x for x in losses(reference) if x[1] <= 2])

    config = resume_config(run_dir, {"n_steps": N_STEPS, "mesh": None}, quiet=True)
    summary = train(config, resume=True, quiet=True)
    assert summary["steps"] == N_STEPS and summary["backend_description"]["processes"] == 1
    assert_same_losses(losses(run_dir), losses(reference))
    assert_same_adapter(run_dir / "adapter", reference / "adapter")


def test_batch_size_must_divide_by_the_processes(setup, tmp_path, monkeypatch):
    """Checked before the model loads or the process group starts."""
    from loraswitch.backends.torch_peft.backend import TorchBackend
    from loraswitch.core.types import ModelSource

    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    config = resolve(str(setup / "config.yaml"), {"batch_size": 3}, environ={})
    with pytest.raises(UserError, match=r"^batch_size: 3 does not divide by the data-parallel size 2;"):
        TorchBackend(device="cpu").load(ModelSource(name="tiny", path=setup / "tiny"), config)
    assert not torch.distributed.is_initialized()


def test_mesh_must_match_the_processes(setup):
    """mesh on one process: torch needs torchrun for more than one."""
    from loraswitch.backends.torch_peft.backend import TorchBackend
    from loraswitch.core.types import ModelSource

    config = resolve(str(setup / "config.yaml"), {"mesh": {"fsdp": 2}}, environ={})
    with pytest.raises(
        UserError, match=r"^mesh: \{fsdp: 2\} spans 2 processes but this run has 1; .*torchrun --nproc_per_node N"
    ):
        TorchBackend(device="cpu").load(ModelSource(name="tiny", path=setup / "tiny"), config)

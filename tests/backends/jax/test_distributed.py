"""The jax backend on 4 CPU devices (a jax.sharding mesh) trains exactly as on one device.

Run: .venv/bin/pytest tests/backends/jax/test_distributed.py -q   (about a minute on 2 cores)

jax fixes its device count when it starts, so every multi-device run is a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``; the single-device reference runs here.
A tiny random Llama in fp32 with dropout 0.1 (portable masks: the same whatever the device
count), 4 steps of 2 micro-batches of 4 rows: on a 2 x 2 mesh (rows over 4 devices, base weights
sharded 2 ways), on {data: 4} resumed on one device, and on 2 processes of 2 devices joined by
jax.distributed (the multi-host path, over gloo).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

from helpers.distributed_runs import N_STEPS, assert_same_adapter, assert_same_losses, losses, write_setup

from loraswitch.core.config import resolve
from loraswitch.core.errors import UserError
from loraswitch.core.training.engine import resume_config, train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Model, data and config.yaml, written once for the module."""
    return write_setup(tmp_path_factory.mktemp("jaxdist"), "jax")


def child_env(devices: int, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LORASWITCH_", "JAX_")) and k not in ("XLA_FLAGS", "RANK", "WORLD_SIZE")
    }
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)
    return env


def cli_train(setup: Path, run_dir: Path, *overrides: str, devices: int = 4, **env: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "loraswitch.core.cli",
        "train",
        str(setup / "config.yaml"),
        "--output_dir",
        str(run_dir),
        "--quiet",
        *overrides,
    ]
    return subprocess.Popen(
        cmd, env=child_env(devices, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, expect_rc: int = 0) -> str:
    try:
        out, err = process.communicate(timeout=240)
    finally:
        process.kill()
    assert process.returncode == expect_rc, out[-3000:] + err[-6000:]
    return err


def description(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["backend_description"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(setup, tmp_path_factory):
    """Every multi-device run, started at once (they mostly compile, and overlap well with the
    reference run in this process); each test waits for its own."""
    root = tmp_path_factory.mktemp("runs")
    coordinator = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "JAX_NUM_PROCESSES": "2"}
    runs = {
        "mesh": [cli_train(setup, root / "mesh", "--mesh", "{data: 2, fsdp: 2}")],
        "data4": [cli_train(setup, root / "data4", "--mesh", "{data: 4}", "--n_steps", "2")],
        "hosts": [
            cli_train(
                setup, root / "hosts", "--mesh", "{data: 2, fsdp: 2}", devices=2, JAX_PROCESS_ID=str(i), **coordinator
            )
            for i in range(2)
        ],
        "bad": [cli_train(setup, root / "bad", "--batch_size", "6")],
    }
    yield {name: (root / name, processes) for name, processes in runs.items()}
    for processes in runs.values():
        for process in processes:
            process.kill()


@pytest.fixture(scope="module")
def reference(setup, launched, tmp_path_factory):
    """The single-device run, in this process."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    config = resolve(str(setup / "config.yaml"), {"output_dir": str(run_dir)}, environ={})
    summary = train(config, quiet=True)
    assert summary["steps"] == N_STEPS and summary["backend_description"]["device_count"] == 1
    return run_dir


def test_two_by_two_mesh_matches_one_device(launched, reference):
    """Rows over 4 devices, base weights sharded over fsdp 2: the per-step losses, eval losses
    and the final adapter of the single-device run."""
    run_dir, (process,) = launched["mesh"]
    finish(process)
    assert_same_losses(losses(run_dir), losses(reference))
    assert_same_adapter(run_dir / "adapter", reference / "adapter")
    facts = description(run_dir)
    assert (facts["device_count"], facts["processes"], facts["parallel"]) == (4, 1, "data 2 x fsdp 2")
    assert facts["remat"] == "dots"  # fsdp: each layer's weights are gathered again for the backward pass


def test_four_device_checkpoint_resumes_on_one_device(launched, reference):
    """Steps 1-2 data-parallel on 4 devices, steps 3-4 resumed here on one: the checkpoint holds
    whole arrays, and the run ends as the one that never left one device."""
    run_dir, (process,) = launched["data4"]
    finish(process)
    assert description(run_dir)["parallel"] == "data x4"
    assert_same_losses(losses(run_dir), [x for x in losses(reference) if x[1] <= 2])

    config = resume_config(run_dir, {"n_steps": N_STEPS, "mesh": None}, quiet=True)
    summary = train(config, resume=True, quiet=True)
    assert summary["steps"] == N_STEPS and summary["backend_description"]["device_count"] == 1
    assert_same_losses(losses(run_dir), losses(reference))
    assert_same_adapter(run_dir / "adapter", reference / "adapter")


def test_two_processes_join_through_jax_distributed(launched, reference):
    """Two processes of 2 devices each, as two hosts would run: one global 2 x 2 mesh, the
    same losses, and only process 0 writes the run directory."""
    run_dir, processes = launched["hosts"]
    for process in processes:
        finish(process)
    assert_same_losses(losses(run_dir), losses(reference))
    assert_same_adapter(run_dir / "adapter", reference / "adapter")
    facts = description(run_dir)
    assert (facts["device_count"], facts["processes"]) == (4, 2)
    events = [json.loads(line)["event"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and events.count("step") == N_STEPS
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


def test_batch_size_must_divide_by_the_devices(launched):
    """batch_size is global and split over all 4 devices: 6 rows cannot be; the CLI says so in
    one line (exit 2) before the model loads."""
    run_dir, (process,) = launched["bad"]
    err = finish(process, expect_rc=2)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "batch_size: 6 does not divide by the data-parallel size 4;" in lines[0], err
    assert "mesh: null trains on all 4 devices jax sees" in lines[0]
    assert not (run_dir / "config.yaml").exists()


def test_mesh_must_match_the_devices(setup):
    """Here jax has one device: a 2 x 2 mesh is a one-line error naming mesh."""
    from loraswitch.backends.jax_flax.backend import JaxBackend
    from loraswitch.core.types import ModelSource

    config = resolve(str(setup / "config.yaml"), {"mesh": {"data": 2, "fsdp": 2}}, environ={})
    with pytest.raises(
        UserError,
        match=r"^mesh: \{data: 2, fsdp: 2\} spans 4 devices but this run has 1; "
        r".*\(jax sees 1 device\(s\): cpu\)$",
    ) as info:
        JaxBackend().load(ModelSource(name="tiny", path=setup / "tiny"), config)
    assert "\n" not in str(info.value)


COMPILED_STEP_FACTS = """
import json, re, sys
import numpy as np
from loraswitch.core.config import validate
from loraswitch.core.models.sources import resolve_model
from loraswitch.core.plugins import create_backend
from loraswitch.core.types import Batch
from loraswitch.backends.jax_flax.sharding import put_rows
n = int(sys.argv[1])
config = validate({"backend": "jax", "model": "random:tiny", "batch_size": 4, "lora_dropout": 0.0,
                   "mesh": {"data": n} if n > 1 else None}, "test")
backend = create_backend("jax")
backend.load(resolve_model("random:tiny"), config)
ids = np.random.default_rng(0).integers(0, 500, (4, 128)).astype(np.int32)
batch = Batch(input_ids=ids, attention_mask=np.ones_like(ids), labels=ids)
args = (backend.lora, backend.opt_state, backend.frozen, *put_rows(batch, backend.layout),
        *(np.float32(1e-3), np.float32(1e-3), np.int32(2), np.int32(0), np.int32(0)), backend._no_keys)
compiled = backend.fn.micro_step.lower(*args).compile()
cost = compiled.cost_analysis()
cost = cost[0] if isinstance(cost, list) else cost
print(json.dumps({"flops": cost["flops"], "all_gathers": len(re.findall("all-gather", compiled.as_text()))}))
"""


def test_data_parallel_step_splits_all_work_including_the_loss(tmp_path):
    """On {data: 2} each device computes half the FLOPs of one device — the chunked lm_head and
    cross-entropy included — and gathers nothing. (Chunking the flattened tokens once put whole
    chunks on one device: XLA gathered the hidden states and every device ran the whole global
    batch's lm_head, the 16% missing from 2-GPU scaling.) Several chunks per micro-batch here."""
    facts = {}
    for n in (1, 2):
        env = child_env(n, LORASWITCH_JAX_LOSS_CHUNK="128", LORASWITCH_CACHE=str(tmp_path / "cache"))
        out = subprocess.run([sys.executable, "-c", COMPILED_STEP_FACTS, str(n)], env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        facts[n] = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts[2]["all_gathers"] == 0
    assert facts[2]["flops"] == pytest.approx(facts[1]["flops"] / 2, rel=0.02)

"""An outside-style plugin (plain_torch/: plain PyTorch LoRA, no peft, written only against
``loraswitch.core.api``) registered through the plugin manager matches the torch backend: the
same per-step losses, adapters that load into each other, checkpoints that resume on each other.

Run: .venv/bin/pytest tests/outside_plugin -q
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from loraswitch.core.api import Backend, Batch, Config, MicroStep, ModelSource  # noqa: E402
from loraswitch.core.models.random_model import write_random_model  # noqa: E402
from loraswitch.core.plugins import create_backend, get_plugin_manager, reset_plugin_manager  # noqa: E402
from outside_plugin import plain_torch  # noqa: E402

PLUGIN_DIR = Path(plain_torch.__file__).parent


@pytest.fixture(autouse=True)
def registered(isolated_env):
    torch.set_num_threads(1)
    get_plugin_manager().register(plain_torch, name="plain-torch")
    yield
    reset_plugin_manager()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ModelSource:
    return ModelSource(name="random:tiny", path=write_random_model(tmp_path_factory.mktemp("tiny"), "tiny", seed=0))


def test_the_plugin_uses_only_the_public_api():
    for file in PLUGIN_DIR.glob("*.py"):
        tree = ast.parse(file.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        ours = {m for m in imported if m.startswith("loraswitch")}
        assert ours <= {"loraswitch.core.api"}, (file.name, ours)
        assert "peft" not in imported, file.name


def windows(config: Config, n_steps: int):
    """Right-padded batches of uneven rows, 2 micro-batches a window, two windows in turn, a changing lr."""
    for step in range(n_steps):
        rng = np.random.default_rng(step % 2)
        batches = []
        for _ in range(2):
            ids = rng.integers(0, 512, (2, 16)).astype(np.int32)
            mask = np.ones_like(ids)
            mask[1, 11:] = 0
            labels = np.where(mask == 1, ids, -100).astype(np.int32)
            labels[:, :3] = -100
            batches.append(Batch(ids, mask, labels))
        weight = 1.0 / sum(b.n_targets for b in batches)
        lr = 1e-2 * (1 - step / (2 * n_steps))
        yield [MicroStep(b, weight, j == 1, lr, step, j, 2) for j, b in enumerate(batches)]


def run(backend, config, steps: range) -> list[float]:
    out = []
    for step, window in enumerate(windows(config, steps.stop)):
        if step in steps:
            out.append(sum(float(backend.micro_step(m)) for m in window))
    return out


def test_matches_the_torch_backend_and_shares_its_files(tiny, tmp_path):
    from loraswitch.backends.torch_peft.backend import TorchBackend

    config = Config(
        lora_r=4, lora_alpha=8, lora_dropout=0.1, seed=2, weight_decay=0.01, max_grad_norm=1.0, precision="fp32"
    )
    ours = create_backend("plain-torch")
    assert isinstance(ours, Backend) and ours.name == "plain-torch"
    ours.load(tiny, config)
    reference = TorchBackend(device="cpu")
    reference.load(tiny, config)

    losses, expected = run(ours, config, range(6)), run(reference, config, range(6))
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=0)
    assert expected[-1] < expected[0]

    # A checkpoint written by the plugin at step 6 continues on the torch backend, and back.
    ours.save_adapter(tmp_path / "ours")
    ours.save_state(tmp_path / "ours")
    reference.save_adapter(tmp_path / "ref")
    reference.save_state(tmp_path / "ref")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text()) == json.loads(
        (tmp_path / "ref" / "adapter_config.json").read_text()
    )
    continued = TorchBackend(device="cpu")
    continued.load(tiny, config)
    continued.load_adapter(tmp_path / "ours")
    continued.load_state(tmp_path / "ours")
    back = create_backend("plain-torch")
    back.load(tiny, config)
    back.load_adapter(tmp_path / "ref")
    back.load_state(tmp_path / "ref")
    expected_next = run(reference, config, range(6, 9))
    np.testing.assert_allclose(run(continued, config, range(6, 9)), expected_next, rtol=1e-5, atol=0)
    np.testing.assert_allclose(run(back, config, range(6, 9)), expected_next, rtol=1e-5, atol=0)


def test_trains_through_the_engine(tmp_path):
    from loraswitch.core.config import resolve
    from loraswitch.core.training.engine import train

    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(12))
    )
    values = dict(
        backend="plain-torch",
        model="random:tiny",
        data=str(tmp_path / "train.jsonl"),
        output_dir=str(tmp_path / "run"),
        batch_size=2,
        accumulation_steps=2,
        n_steps=3,
        eval_every=3,
        save_every=3,
        lora_r=4,
        lora_alpha=8,
        precision="fp32",
    )
    summary = train(resolve(None, values, environ={}), quiet=True)
    assert (summary["stop_reason"], summary["steps"], summary["backend"]) == ("n_steps", 3, "plain-torch")
    assert sorted(p.name for p in (tmp_path / "run" / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "loraswitch.json",
    ]

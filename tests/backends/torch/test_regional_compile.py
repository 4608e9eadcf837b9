"""torch.compile per decoder layer (backends/torch_peft/layer_calls.py): one compiled function
serves every layer, so the number of compiled graphs does not grow with depth, and the compiled
step computes what the eager one does.

A six-layer Gemma 3 (sliding, global, sliding, ...) with portable dropout, packed rows (rope
positions that restart, a document mask) and ``dots`` checkpointing: every feature that must
survive compilation. torch.compile runs with the ``aot_eager`` backend (dynamo and AOTAutograd,
the parts that decide graphs and recompiles, without inductor's C++ build: minutes on 2 cores).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers.transformers_models import write_transformers_model  # noqa: E402

from loraswitch.backends.torch_peft.backend import TorchBackend  # noqa: E402
from loraswitch.core.config import Config  # noqa: E402
from loraswitch.core.types import IGNORE_INDEX, Batch, MicroStep, ModelSource  # noqa: E402

LAYERS = 6


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gemma3")
    return write_transformers_model(
        directory,
        "Gemma3ForCausalLM",
        seed=3,
        num_hidden_layers=LAYERS,
        sliding_window_pattern=2,
        head_dim=16,
        sliding_window=8,
    )


def packed_batches(n: int, length: int = 24) -> list[Batch]:
    """Rows of two examples each (cut at a varying point), so masks and positions change per batch."""
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(n):
        ids = rng.integers(0, 500, (2, length)).astype(np.int32)
        cut = int(rng.integers(6, length - 6))
        positions = np.concatenate([np.arange(cut), np.arange(length - cut)])[None].repeat(2, 0)
        segments = np.concatenate([np.ones(cut), np.full(length - cut, 2)])[None].repeat(2, 0).astype(np.int32)
        labels = ids.copy()
        labels[:, [0, cut]] = IGNORE_INDEX
        batches.append(Batch(ids, np.ones_like(ids), labels, segment_ids=segments, position_ids=positions))
    return batches


def train(model_dir, compile: str) -> list[float]:
    backend = TorchBackend(device="cpu")
    config = Config(
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.1,
        seed=0,
        precision="fp32",
        compile=compile,
        gradient_checkpointing="dots",
    )
    backend.load(ModelSource(name="gemma3", path=model_dir), config)
    losses = []
    for step, batch in enumerate(packed_batches(3)):
        micro = MicroStep(batch, 1.0 / batch.n_targets, True, 1e-2, step, 0, 1)
        losses.append(float(backend.micro_step(micro)))
    losses.append(backend.eval_loss(packed_batches(1)[0])[0])
    assert backend.describe()["compile"] is (compile == "true")
    return losses


def test_one_compiled_layer_function_serves_every_layer_and_matches_eager(gemma3, monkeypatch):
    import torch._dynamo

    eager = train(gemma3, "false")
    torch._dynamo.reset()
    compiled_frames = []
    real_compile = torch.compile

    def compile_aot_eager(fn, **kwargs):
        compiled_frames.append(getattr(fn, "__name__", repr(fn)))
        return real_compile(fn, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = train(gemma3, "true")
    np.testing.assert_allclose(compiled, eager, rtol=1e-5)
    assert compiled_frames.count("run_layer") == 1  # one torch.compile for all six layers
    # Graphs: the layers (first layer: its input needs no gradient; sliding; global), each with
    # and without gradients (evaluation), plus the loss functions: not six per mode.
    assert counters["stats"]["unique_graphs"] <= 3 * 2 + 2
    assert not counters["graph_break"]

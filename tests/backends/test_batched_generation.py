"""Batched generation (``generate_batch``: left padding, one KV cache) gives, row by row, what
``generate`` gives one prompt at a time, on both backends: greedy, with stop tokens that end
rows at different steps, sampled with the same seed, through a non-zero LoRA; and
``generate_all`` (core/training/generation.py) keeps the caller's order and falls back to a
loop for backends without ``generate_batch``."""

from __future__ import annotations

import numpy as np
import pytest

from loraswitch.core.config import Config
from loraswitch.core.models.random_model import write_random_model
from loraswitch.core.training.generation import generate_all
from loraswitch.core.types import ModelSource

PROMPTS = [[5, 9, 33], list(range(40, 57)), [7], [100 + i for i in range(30)], [3, 3, 3, 3, 3, 3, 3, 3, 3]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ModelSource:
    return ModelSource(name="random:tiny", path=write_random_model(tmp_path_factory.mktemp("tiny"), "tiny", seed=0))


def adapted_backend(name: str, source: ModelSource, tmp_path):
    """The backend with LoRA B set off zero (its own adapter, saved, B filled with noise and
    loaded back), so generation goes through the adapter; no training step, nothing to compile."""
    from safetensors.numpy import load_file, save_file

    config = Config(lora_r=4, lora_alpha=8, lora_dropout=0.0, seed=0, precision="fp32", compile="false")
    if name == "torch":
        import torch

        from loraswitch.backends.torch_peft.backend import TorchBackend

        torch.set_num_threads(1)
        backend = TorchBackend(device="cpu")
    else:
        from loraswitch.backends.jax_flax.backend import JaxBackend

        backend = JaxBackend()
    backend.load(source, config, train=False)
    backend.save_adapter(tmp_path)
    weights = load_file(str(tmp_path / "adapter_model.safetensors"))
    rng = np.random.default_rng(0)
    noisy = {k: (rng.normal(0, 0.05, v.shape).astype(v.dtype) if "lora_B" in k else v) for k, v in weights.items()}
    save_file(noisy, str(tmp_path / "adapter_model.safetensors"))
    backend.load_adapter(tmp_path)
    return backend


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_batched_equals_one_at_a_time(tiny, name, tmp_path):
    backend = adapted_backend(name, tiny, tmp_path)
    alone = [backend.generate(p, max_new_tokens=10) for p in PROMPTS]
    assert len({tuple(a) for a in alone}) > 1  # the rows differ, so a mix-up would show
    batched = backend.generate_batch(PROMPTS, max_new_tokens=10, pad_id=0)
    assert batched == alone
    # stop tokens end rows at different steps; the stop token is not returned
    stop = (alone[1][2], alone[3][5])
    alone_stopped = [backend.generate(p, max_new_tokens=10, stop_ids=stop) for p in PROMPTS]
    assert any(len(a) < 10 for a in alone_stopped)
    assert backend.generate_batch(PROMPTS, max_new_tokens=10, stop_ids=stop, pad_id=0) == alone_stopped
    # sampling: each row draws as it would alone with the same seed
    sampled = [backend.generate(p, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=4) for p in PROMPTS]
    assert backend.generate_batch(PROMPTS, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=4) == sampled
    assert generate_all(backend, PROMPTS, batch_size=8, max_new_tokens=10, pad_id=0) == alone


class Looping:
    """A backend with only ``generate`` (as the numpy example plugin); its answer is the prompt's length."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompt_ids, *, max_new_tokens, temperature=0.0, top_p=1.0, seed=0, stop_ids=()):
        self.calls += 1
        return [len(prompt_ids)] * max_new_tokens


def test_generate_all_loops_for_backends_without_batches():
    backend = Looping()
    assert generate_all(backend, PROMPTS, batch_size=4, max_new_tokens=2) == [[len(p)] * 2 for p in PROMPTS]
    assert backend.calls == len(PROMPTS)


class Batching(Looping):
    """A backend with ``generate_batch`` too; it records the batches it was given."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def generate_batch(self, prompts, *, pad_id=0, **options):
        self.batches.append([len(p) for p in prompts])
        return [self.generate(p, **options) for p in prompts]


def test_generate_all_batches_by_length_and_keeps_the_order():
    backend = Batching()
    assert generate_all(backend, PROMPTS, batch_size=2, max_new_tokens=2) == [[len(p)] * 2 for p in PROMPTS]
    assert backend.batches == [[1, 3], [9, 17], [30]]

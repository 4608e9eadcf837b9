"""Config ``gradient_checkpointing`` (off | full | dots | auto) on both backends: recomputing
activations changes memory and speed, never the numbers. Three steps with portable dropout on
(the recomputed masks must be the saved ones) give the losses and adapter of ``off`` (jax: to
fp32 reassociation, as XLA fuses the recomputed graph differently); the
backend's description says which policy ran and whether ``auto`` chose it."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from loraswitch.backends.jax_flax.backend import JaxBackend
from loraswitch.backends.torch_peft.backend import TorchBackend
from loraswitch.core.config import Config, validate
from loraswitch.core.data.batching import collate
from loraswitch.core.models.random_model import write_random_model
from loraswitch.core.models.shapes import shape_config
from loraswitch.core.training import activation_memory
from loraswitch.core.types import MicroStep, ModelSource, TokenizedExample

BACKENDS = {"torch": lambda: TorchBackend(device="cpu"), "jax": JaxBackend}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("tiny") / "tiny", "tiny", seed=1)


def windows(n_steps: int = 3):
    rng = np.random.default_rng(2)
    examples = [TokenizedExample(rng.integers(0, 512, n).astype(np.int32), np.arange(n) >= 2) for n in (20, 14, 24, 9)]
    for step in range(n_steps):
        batches = [collate(examples[j : j + 2], 2, 0, 24) for j in (0, 2)]
        weight = 1.0 / sum(b.n_targets for b in batches)
        yield [MicroStep(b, weight, j == 1, 1e-2, step, j, 2) for j, b in enumerate(batches)]


def train(backend_name: str, model_dir, policy: str, out):
    config = Config(
        lora_r=4, lora_alpha=8, lora_dropout=0.1, precision="fp32", batch_size=2, gradient_checkpointing=policy
    )
    backend = BACKENDS[backend_name]()
    backend.load(ModelSource(name="tiny", path=model_dir), config)
    losses = [sum(float(backend.micro_step(m)) for m in window) for window in windows()]
    backend.save_adapter(out)
    return losses, load_file(str(out / "adapter_model.safetensors")), backend.describe()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_recomputing_changes_no_number(backend_name, tiny, tmp_path):
    losses, adapter, facts = train(backend_name, tiny, "auto", tmp_path / "auto")
    assert facts["gradient_checkpointing"] == "off (auto)"  # on CPU nothing is recomputed
    for policy in ("full", "dots"):
        ours, ours_adapter, facts = train(backend_name, tiny, policy, tmp_path / policy)
        assert facts["gradient_checkpointing"] == policy
        np.testing.assert_allclose(ours, losses, rtol=1e-6)
        for name, value in adapter.items():
            np.testing.assert_allclose(ours_adapter[name], value, rtol=0, atol=1e-4 * np.abs(value).max(), err_msg=name)
    assert any(np.abs(value).max() > 0 for name, value in adapter.items() if "lora_B" in name)  # it trained


def test_jax_remat_follows_the_policy(tiny):
    backend = JaxBackend()
    backend.load(ModelSource(name="tiny", path=tiny), Config(precision="fp32", gradient_checkpointing="dots"))
    assert backend.describe()["remat"] == "dots+fused"  # dots as the fused products see it


def test_torch_wraps_every_layer_only_when_asked(tiny):
    backend = TorchBackend(device="cpu")
    backend.load(ModelSource(name="tiny", path=tiny), Config(precision="fp32", gradient_checkpointing="full"))
    assert [getattr(layer.forward, "checkpoint_policy", None) for layer in backend.decoder.layers] == ["full"] * 2
    plain = TorchBackend(device="cpu")
    plain.load(ModelSource(name="tiny", path=tiny), Config(precision="fp32", gradient_checkpointing="off"))
    assert not any(hasattr(layer.forward, "checkpoint_policy") for layer in plain.decoder.layers)


def test_config_takes_hf_booleans_and_names_the_policies():
    assert validate({"gradient_checkpointing": True}, "c").gradient_checkpointing == "full"
    assert validate({"gradient_checkpointing": False}, "c").gradient_checkpointing == "off"
    from loraswitch.core.errors import UserError

    with pytest.raises(UserError, match="gradient_checkpointing"):
        validate({"gradient_checkpointing": "sometimes"}, "c")


GIB = 1 << 30


def test_auto_recomputes_only_what_does_not_fit():
    llama_1b = shape_config("llama-1b")
    tokens, bf16, weights = 4 * 2048, 2, int(2.5 * GIB)
    # calibration: torch's measured peak without recomputation was 18.6 GiB (docs/memory.md)
    estimate = (weights + activation_memory.activation_bytes(llama_1b, tokens, "off", bf16)) / GIB
    assert 16 < estimate < 21
    leaner = [activation_memory.activation_bytes(llama_1b, tokens, p, bf16) for p in ("off", "dots", "full")]
    assert leaner == sorted(leaner, reverse=True)

    def choose(free_gib, **kw):
        return activation_memory.choose(
            llama_1b, tokens, bytes_per_value=bf16, weight_bytes=weights, free_bytes=int(free_gib * GIB), **kw
        )

    assert choose(140) == "off"
    assert choose(24) == "dots"
    assert choose(8) == "full"
    assert choose(1) == "full"  # nothing fits: the leanest, and the run reports the OOM if it comes
    assert choose(140, preference=("dots", "full")) == "dots"

"""The jax backend against transformers + peft (through the torch backend), on CPU in fp32.

Both backends load the very same tiny random Llama directory (safetensors, written once) and the
very same initial adapter. The adapter's B is non-zero, so the LoRA path changes the logits from
the first step; it is drawn here with numpy and written in PEFT format, and each backend loads it
with its own loader (so cross-backend loading is exercised too).

Run: .venv/bin/pytest tests/backends/test_parity.py -q
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from safetensors.numpy import load_file  # noqa: E402

from loraswitch.backends.jax_flax import adapter as peft_format  # noqa: E402
from loraswitch.backends.jax_flax.backend import JaxBackend  # noqa: E402
from loraswitch.backends.torch_peft.backend import TorchBackend  # noqa: E402
from loraswitch.core.config import Config  # noqa: E402
from loraswitch.core.data.batching import collate, epoch_order  # noqa: E402
from loraswitch.core.models.random_model import write_random_model  # noqa: E402
from loraswitch.core.models.shapes import shape_config  # noqa: E402
from loraswitch.core.training.schedule import plan_epoch  # noqa: E402
from loraswitch.core.types import (  # noqa: E402
    Batch,
    MicroStep,
    ModelSource,
    TokenizedExample,
)

RANK, ALPHA = 4, 8.0
PAD_ID = 0


def make_config(**overrides) -> Config:
    values = dict(
        lora_r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, precision="fp32", seed=0, batch_size=2, accumulation_steps=2
    )
    values.update(overrides)
    return Config(**values)


def load(backend_cls, model_dir: Path, config: Config, adapter: Path | None = None):
    backend = backend_cls(device="cpu") if backend_cls is TorchBackend else backend_cls()
    backend.load(ModelSource(name=str(model_dir), path=model_dir), config)
    if adapter is not None:
        backend.load_adapter(adapter)
    return backend


def write_initial_adapter(
    directory: Path, model_dir: Path, seed: int, *, use_rslora: bool = False, b_scale: float = 1.0
) -> Path:
    """A PEFT adapter with random A *and* B (times ``b_scale``), identical for both backends."""
    spec = load_spec(model_dir)
    rng = np.random.default_rng(seed)
    lora = {}
    for name, (n_in, n_out) in spec.linear_dims().items():
        lora[peft_format.state_name(name, "A")] = rng.uniform(-0.3, 0.3, (spec.num_layers, n_in, RANK)).astype(
            np.float32
        )
        lora[peft_format.state_name(name, "B")] = (
            rng.normal(0, 0.05, (spec.num_layers, RANK, n_out)) * b_scale
        ).astype(np.float32)
    config = peft_format.peft_config(
        r=RANK,
        alpha=ALPHA,
        dropout=0.0,
        targets=list(spec.linear_dims()),
        use_rslora=use_rslora,
        base_model=str(model_dir),
    )
    peft_format.save_adapter(directory, lora, spec, config)
    return directory


def load_spec(model_dir: Path):
    import json

    from loraswitch.backends.jax_flax.spec import spec_from_config

    return spec_from_config(json.loads((model_dir / "config.json").read_text()), model_dir / "config.json")


def random_batch(seed: int, batch: int = 2, length: int = 24, vocab: int = 512) -> Batch:
    """Right-padded rows of different lengths with a masked prompt, as the core builds them."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(batch):
        n = int(rng.integers(length // 2, length + 1))
        mask = np.zeros(n, bool)
        mask[int(rng.integers(1, n // 2)) :] = True
        examples.append(TokenizedExample(rng.integers(0, vocab, n).astype(np.int32), mask))
    # One padded length per call site: each new shape is a new XLA compile (seconds on 2 CPU cores).
    return collate(examples, batch, PAD_ID, pad_to_multiple=length)


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("tiny"), "tiny", seed=0)


@pytest.fixture(scope="module")
def llama3_tied_dir(tmp_path_factory) -> Path:
    """Tied embeddings and Llama 3.1 rope scaling in the legacy ``rope_scaling`` form real
    checkpoints use; original_max_position_embeddings is small so all three frequency bands
    (kept, divided, interpolated) occur at head_dim 16."""
    config = shape_config("tiny")
    config.update(
        tie_word_embeddings=True,
        rope_theta=500000.0,
        max_position_embeddings=64,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    )
    return write_random_model(tmp_path_factory.mktemp("llama3_tied"), config, seed=1)


@pytest.fixture(scope="module")
def mistral_window_dir(tmp_path_factory) -> Path:
    """Mistral: a sliding window (8) shorter than the batch (40), and a head_dim (32) that is
    not hidden_size / heads."""
    config = shape_config("tiny")
    config.update(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=8, head_dim=32)
    return write_random_model(tmp_path_factory.mktemp("mistral"), config, seed=3)


@pytest.mark.parametrize("which", ["tiny_dir", "llama3_tied_dir", "mistral_window_dir"])
def test_logits_match_transformers(which, request, tmp_path):
    model_dir = request.getfixturevalue(which)
    batch = random_batch(3, batch=3, length=40)
    torch_backend = load(TorchBackend, model_dir, make_config())
    plain = torch_backend.logits(batch)
    adapter = write_initial_adapter(tmp_path / "init", model_dir, seed=1)
    torch_backend.load_adapter(adapter)
    reference = torch_backend.logits(batch)
    assert relative_error(plain, reference) > 1e-3  # the adapter's LoRA path changes the logits
    ours = load(JaxBackend, model_dir, make_config(), adapter).logits(batch)
    assert ours.shape == reference.shape == (3, batch.input_ids.shape[1], 512)
    # Real tokens only: under a sliding window a pad position may see no unmasked key at all,
    # and what a fully masked softmax returns is each kernel's own convention.
    real = batch.attention_mask == 1
    assert not real.all()
    assert relative_error(ours[real], reference[real]) < 1e-5


@pytest.mark.parametrize("backend_cls", [TorchBackend, JaxBackend], ids=["torch", "jax"])
def test_rslora_scales_the_lora_path_by_alpha_over_sqrt_r(backend_cls, tiny_dir, tmp_path):
    """use_rslora: the update is scaled by alpha / sqrt(r) instead of alpha / r. With r = 4 that
    is twice as much, so an rsLoRA adapter gives exactly the logits of a plain adapter whose B
    is doubled. A backend that ignored use_rslora would give the logits of B, not of 2 B."""
    batch = random_batch(4, batch=3, length=40)  # test_logits_match_transformers' shape: its jit is reused
    rs = write_initial_adapter(tmp_path / "rs", tiny_dir, seed=4, use_rslora=True)
    doubled = write_initial_adapter(tmp_path / "doubled", tiny_dir, seed=4, b_scale=np.sqrt(RANK))
    plain = write_initial_adapter(tmp_path / "plain", tiny_dir, seed=4)
    rs_logits = load(backend_cls, tiny_dir, make_config(use_rslora=True), rs).logits(batch)
    reference = load(backend_cls, tiny_dir, make_config(), doubled)
    doubled_logits = reference.logits(batch)
    reference.load_adapter(plain)
    plain_logits = reference.logits(batch)
    real = batch.attention_mask == 1
    assert relative_error(rs_logits[real], doubled_logits[real]) < 1e-5
    assert relative_error(rs_logits[real], plain_logits[real]) > 1e-3


def micro_steps(examples: list[TokenizedExample], config: Config, n_steps: int):
    """The engine's windows: shuffled epochs cut into micro-batches and windows, whose last is
    short (9 examples, batch 2, accumulation 2 -> windows of 2, 2, 1 micro-batches)."""
    step, epoch = 0, 0
    while True:
        order = epoch_order(len(examples), config.seed, epoch)
        for window in plan_epoch(len(examples), config.batch_size, config.accumulation_steps):
            batches = [collate([examples[order[i]] for i in r], config.batch_size, PAD_ID, 24) for r in window]
            weight = 1.0 / sum(b.n_targets for b in batches)
            lr = 5e-3 * (1 - step / 20)  # a changing lr: it must reach the optimizer every step
            yield [
                MicroStep(b, weight, j == len(batches) - 1, lr, step, j, len(batches)) for j, b in enumerate(batches)
            ]
            step += 1
            if step == n_steps:
                return
        epoch += 1


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """Both backends trained 10 steps from the same adapter on the same data; their adapters saved."""
    root = tmp_path_factory.mktemp("trained")
    initial = write_initial_adapter(root / "initial", tiny_dir, seed=2)
    config = make_config(weight_decay=0.1, max_grad_norm=0.5)  # grad norm ~1: clipping is active
    backends = {
        "jax": load(JaxBackend, tiny_dir, config, initial),
        "torch": load(TorchBackend, tiny_dir, config, initial),
    }
    rng = np.random.default_rng(5)
    examples = []
    for _ in range(9):
        n = int(rng.integers(6, 25))
        mask = np.arange(n) >= int(rng.integers(1, 4))
        examples.append(TokenizedExample(rng.integers(0, 512, n).astype(np.int32), mask))
    losses = {"jax": [], "torch": []}
    windows = []
    for window in micro_steps(examples, config, n_steps=10):
        windows.append(len(window))
        for name, backend in backends.items():
            losses[name].append(sum(float(backend.micro_step(m)) for m in window))
    for name, backend in backends.items():
        backend.save_adapter(root / name)
    return {"backends": backends, "losses": losses, "windows": windows, "root": root, "initial": initial}


def test_training_losses_match(trained):
    assert 1 in trained["windows"] and 2 in trained["windows"]  # short windows were exercised
    jax_losses, torch_losses = np.array(trained["losses"]["jax"]), np.array(trained["losses"]["torch"])
    assert len(jax_losses) == 10
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-4)


def test_trained_weights_match(trained):
    """Norm-wise relative error over the adapter. Not element by element: Adam divides each
    gradient by its own magnitude, so an element whose gradient is near eps (1e-8) turns fp32
    rounding noise into a visible difference of that one element (seen: 6e-5 on a 0.04 weight)."""
    root = trained["root"]
    ours, reference = (
        load_file(str(root / "jax" / "adapter_model.safetensors")),
        load_file(str(root / "torch" / "adapter_model.safetensors")),
    )
    initial = load_file(str(trained["initial"] / "adapter_model.safetensors"))
    assert sorted(ours) == sorted(reference)
    diff = np.sqrt(sum(((ours[k] - reference[k]) ** 2).sum() for k in reference))
    norm = np.sqrt(sum((reference[k] ** 2).sum() for k in reference))
    assert diff / norm < 1e-4
    # The *updates* agree too (a wrong lr, weight decay or accumulation shows here first).
    update = np.sqrt(sum(((reference[k] - initial[k]) ** 2).sum() for k in reference))
    assert update / norm > 1e-2  # training moved the weights
    assert diff / update < 1e-3


def test_jax_adapter_loads_in_peft(trained, tiny_dir):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    adapter = trained["root"] / "jax"
    base = LlamaForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    batch = random_batch(7)
    with torch.no_grad():
        reference = model(
            input_ids=torch.from_numpy(batch.input_ids).long(),
            attention_mask=torch.from_numpy(batch.attention_mask).long(),
        ).logits.numpy()
    jax_backend = trained["backends"]["jax"]
    jax_backend.load_adapter(adapter)  # its own final weights again, whatever ran before
    assert relative_error(jax_backend.logits(batch), reference) < 1e-4


def test_torch_adapter_loads_in_jax(trained):
    # Reuses the trained jax backend (a fresh one would compile again): load_adapter replaces
    # every LoRA array, so what it held before does not matter.
    jax_backend = trained["backends"]["jax"]
    jax_backend.load_adapter(trained["root"] / "torch")
    batch = random_batch(8)
    assert relative_error(jax_backend.logits(batch), trained["backends"]["torch"].logits(batch)) < 1e-4

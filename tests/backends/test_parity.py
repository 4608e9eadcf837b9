"""The jax backend against transformers + peft (through the torch backend), on CPU in fp32.

Both backends load the very same tiny random Llama directory (safetensors, written once). For
the logits, both load one adapter with random A *and* B (written with the core's PEFT format;
B non-zero so the LoRA path changes the logits), each with its own loader. For training nothing
is injected: each backend draws its own initial adapter from the seed (the core's init) and its
own dropout masks (the core's portable hash), and the per-step losses must still agree, with
dropout 0 and 0.1, for 20 steps. A run checkpointed on one backend then resumes on the other.

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

from helpers.adapters import write_random_adapter  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

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


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core machine: a second torch thread only spins and waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    adapter = write_random_adapter(tmp_path / "init", model_dir, r=RANK, alpha=ALPHA, seed=1)
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


N_STEPS, RESUME_AT = 20, 10
RTOL = 1e-5  # per-step loss, relative


def training_examples() -> list[TokenizedExample]:
    """9 examples of 6-24 tokens, 1-3 prompt tokens each."""
    rng = np.random.default_rng(5)
    examples = []
    for _ in range(9):
        n = int(rng.integers(6, 25))
        mask = np.arange(n) >= int(rng.integers(1, 4))
        examples.append(TokenizedExample(rng.integers(0, 512, n).astype(np.int32), mask))
    return examples


def train_steps(backend, windows) -> list[float]:
    return [sum(float(backend.micro_step(m)) for m in window) for window in windows]


@pytest.fixture(scope="module", params=[0.0, 0.1], ids=["dropout0", "dropout0.1"])
def trained(request, tiny_dir, tmp_path_factory):
    """Both backends trained 20 steps from their own initial adapter (nothing injected), with
    weight decay and active clipping; the adapters saved at step 0, at RESUME_AT (with the
    optimizer state: a checkpoint) and at the end."""
    root = tmp_path_factory.mktemp("trained")
    config = make_config(lora_dropout=request.param, weight_decay=0.1, max_grad_norm=0.5)  # grad norm ~1: clipping
    backends = {"jax": load(JaxBackend, tiny_dir, config), "torch": load(TorchBackend, tiny_dir, config)}
    windows = list(micro_steps(training_examples(), config, n_steps=N_STEPS))
    losses: dict[str, list[float]] = {}
    for name, backend in backends.items():
        backend.save_adapter(root / name / "initial")
        losses[name] = train_steps(backend, windows[:RESUME_AT])
        backend.save_adapter(root / name / "checkpoint")
        backend.save_state(root / name / "checkpoint")
        losses[name] += train_steps(backend, windows[RESUME_AT:])
        backend.save_adapter(root / name / "final")
    return {
        "config": config,
        "backends": backends,
        "losses": losses,
        "windows": windows,
        "root": root,
    }


def test_initial_adapters_are_identical(trained):
    """The core draws the initial adapter: both backends write the very same bytes."""
    root = trained["root"]
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (root / "jax" / "initial" / name).read_bytes() == (root / "torch" / "initial" / name).read_bytes()
    tensors = load_file(str(root / "torch" / "initial" / "adapter_model.safetensors"))
    assert len(tensors) == 2 * 2 * 7  # A and B of 7 projections in 2 layers
    assert all(np.abs(v).max() > 0 for k, v in tensors.items() if ".lora_A." in k)


def test_training_losses_match(trained):
    assert {len(w) for w in trained["windows"]} == {1, 2}  # short windows were exercised
    jax_losses, torch_losses = np.array(trained["losses"]["jax"]), np.array(trained["losses"]["torch"])
    assert len(jax_losses) == N_STEPS
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=RTOL, atol=0)
    assert torch_losses[-1] < torch_losses[0]  # it trained


def test_trained_weights_match(trained):
    """Norm-wise relative error over the adapter. Not element by element: Adam divides each
    gradient by its own magnitude, so an element whose gradient is near eps (1e-8) turns fp32
    rounding noise into a visible difference of that one element (seen: 6e-5 on a 0.04 weight)."""
    root = trained["root"]
    ours, reference = (
        load_file(str(root / "jax" / "final" / "adapter_model.safetensors")),
        load_file(str(root / "torch" / "final" / "adapter_model.safetensors")),
    )
    initial = load_file(str(root / "torch" / "initial" / "adapter_model.safetensors"))
    assert sorted(ours) == sorted(reference)
    diff = np.sqrt(sum(((ours[k] - reference[k]) ** 2).sum() for k in reference))
    norm = np.sqrt(sum((reference[k] ** 2).sum() for k in reference))
    assert diff / norm < 1e-4
    # The *updates* agree too (a wrong lr, weight decay or accumulation shows here first).
    update = np.sqrt(sum(((reference[k] - initial[k]) ** 2).sum() for k in reference))
    assert update / norm > 1e-2  # training moved the weights
    assert diff / update < 1e-3


@pytest.mark.parametrize("first, then", [("torch", "jax"), ("jax", "torch")])
def test_checkpoint_resumes_on_the_other_backend(trained, tiny_dir, first, then):
    """A checkpoint written by one backend at RESUME_AT (adapter + the core's portable AdamW
    state) continues on the other backend along the trajectory of the uninterrupted run."""
    other = {"jax": JaxBackend, "torch": TorchBackend}[then]
    resumed = load(other, tiny_dir, trained["config"])
    resumed.load_adapter(trained["root"] / first / "checkpoint")
    resumed.load_state(trained["root"] / first / "checkpoint")
    losses = train_steps(resumed, trained["windows"][RESUME_AT:])
    np.testing.assert_allclose(losses, trained["losses"][first][RESUME_AT:], rtol=RTOL, atol=0)
    # Without the moments the continuation would differ (the check above is not vacuous).
    fresh = load(other, tiny_dir, trained["config"])
    fresh.load_adapter(trained["root"] / first / "checkpoint")
    without_state = train_steps(fresh, trained["windows"][RESUME_AT : RESUME_AT + 3])
    assert abs(without_state[-1] - losses[2]) > 100 * RTOL * abs(losses[2])


def test_jax_adapter_loads_in_peft(trained, tiny_dir):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    adapter = trained["root"] / "jax" / "final"
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
    jax_backend.load_adapter(trained["root"] / "torch" / "final")
    batch = random_batch(8)
    assert relative_error(jax_backend.logits(batch), trained["backends"]["torch"].logits(batch)) < 1e-4

"""The jax backend against transformers + peft (through the torch backend), on CPU in fp32, for
every family of the registry (core/models/families).

Both backends load the very same tiny model directory (safetensors, written once: random:tiny
for Llama, by transformers itself for Qwen2 and Qwen3). For the logits, both load one adapter with
random A *and* B (written with the core's PEFT format; B non-zero so the LoRA path changes the
logits), each with its own loader. For training nothing is injected: each backend draws its own
initial adapter from the seed (the core's init) and its own dropout masks (the core's portable
hash), and the per-step losses must still agree within 1e-5: 20 steps with dropout 0 and 0.1 on
Llama, 10 steps on a Qwen2 and a Qwen3 block. A Llama run checkpointed on one backend then
resumes on the other.

The variants cover what differs between families: untied and tied heads, llama3 rope scaling,
Mistral's one window, Qwen2's q/k/v biases with a sliding window on its second layer only,
Qwen3's q/k norms and explicit head_dim, and Qwen3 with attention_bias (o_proj's bias is the
unfused path) and every layer sliding; Gemma 2's (1 + weight) norms, sandwich norms, GeGLU,
query_pre_attn_scalar and both soft-caps, Gemma 3's q/k norms and two rope bases, Phi-3's fused
qkv_proj / gate_up_proj. The batch (40 tokens) is longer than every window (8).

Run: .venv/bin/pytest tests/backends/test_parity.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.transformers_models import write_transformers_model

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
from loraswitch.core.types import Batch, MicroStep, ModelSource, TokenizedExample  # noqa: E402

RANK, ALPHA = 4, 8.0
PAD_ID = 0
RTOL = 1e-5  # per-step loss, relative


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


def _llama3_tied(directory: Path) -> Path:
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
    return write_random_model(directory, config, seed=1)


def _mistral_window(directory: Path) -> Path:
    """Mistral: a sliding window (8) shorter than the batch (40), and a head_dim (32) that is
    not hidden_size / heads."""
    config = shape_config("tiny")
    config.update(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=8, head_dim=32)
    return write_random_model(directory, config, seed=3)


QWEN2, QWEN3 = "Qwen2ForCausalLM", "Qwen3ForCausalLM"
GEMMA2, GEMMA3, PHI3 = "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"
WINDOW = dict(use_sliding_window=True, sliding_window=8)
# Gemma: head_dim 16 with query_pre_attn_scalar 24 (the scale is not head_dim ** -0.5); Gemma 2's
# caps are small enough to bite on these weights (scores and logits reach about 1-3).
GEMMA = dict(head_dim=16, sliding_window=8, query_pre_attn_scalar=24)
SOFTCAPS = dict(attn_logit_softcapping=2.0, final_logit_softcapping=1.5)
MODELS = {
    "llama": lambda d: write_random_model(d, "tiny", seed=0),
    "llama3_tied": _llama3_tied,
    "mistral_window": _mistral_window,
    # layer 0 full attention, layer 1 a window of 8 (max_window_layers = 1)
    "qwen2_window": lambda d: write_transformers_model(d, QWEN2, seed=4, max_window_layers=1, **WINDOW),
    "qwen2.5_tied": lambda d: write_transformers_model(d, QWEN2, seed=5, tie_word_embeddings=True),
    "qwen3_tied": lambda d: write_transformers_model(d, QWEN3, seed=6, tie_word_embeddings=True, head_dim=32),
    "qwen3_bias_window": lambda d: write_transformers_model(
        d, QWEN3, seed=7, attention_bias=True, max_window_layers=0, **WINDOW
    ),
    # layer 0 sliding (window 8), layer 1 global; both soft-caps
    "gemma2_softcap": lambda d: write_transformers_model(d, GEMMA2, seed=8, **GEMMA, **SOFTCAPS),
    # layer 0 sliding with the local rope base (10k), layer 1 global (1M); q/k norms
    "gemma3_window": lambda d: write_transformers_model(d, GEMMA3, seed=9, sliding_window_pattern=2, **GEMMA),
    # fused qkv_proj / gate_up_proj, every layer sliding (window 8), untied
    "phi3_window": lambda d: write_transformers_model(d, PHI3, seed=10, sliding_window=8),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """model_dir(name): that model's directory, written once per module."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = MODELS[name](tmp_path_factory.mktemp(name.replace(".", "_")))
        return made[name]

    return get


@pytest.mark.parametrize("which", list(MODELS))
def test_logits_match_transformers(which, model_dir, tmp_path):
    model_dir = model_dir(which)
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


@pytest.mark.parametrize("backend_cls", [TorchBackend, JaxBackend], ids=["torch", "jax"])
def test_rslora_scales_the_lora_path_by_alpha_over_sqrt_r(backend_cls, model_dir, tmp_path):
    """use_rslora: the update is scaled by alpha / sqrt(r) instead of alpha / r. With r = 4 that
    is twice as much, so an rsLoRA adapter gives exactly the logits of a plain adapter whose B
    is doubled. A backend that ignored use_rslora would give the logits of B, not of 2 B."""
    tiny_dir = model_dir("llama")
    batch = random_batch(4, batch=3, length=40)  # test_logits_match_transformers' shape: its jit is reused
    kw = dict(r=RANK, alpha=ALPHA, seed=4)
    rs = write_random_adapter(tmp_path / "rs", tiny_dir, use_rslora=True, **kw)
    doubled = write_random_adapter(tmp_path / "doubled", tiny_dir, b_scale=float(np.sqrt(RANK)), **kw)
    plain = write_random_adapter(tmp_path / "plain", tiny_dir, **kw)
    rs_logits = load(backend_cls, tiny_dir, make_config(use_rslora=True), rs).logits(batch)
    reference = load(backend_cls, tiny_dir, make_config(), doubled)
    doubled_logits = reference.logits(batch)
    reference.load_adapter(plain)
    plain_logits = reference.logits(batch)
    real = batch.attention_mask == 1
    assert relative_error(rs_logits[real], doubled_logits[real]) < 1e-5
    assert relative_error(rs_logits[real], plain_logits[real]) > 1e-3


# ---------------------------------------------------------------- training, nothing injected


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


# (model, lora_dropout, steps): the Llama pair is the identity criterion (20 steps, dropout 0 and
# 0.1, then resume across backends at step 10); one Qwen2 and one Qwen3 block, 10 steps each.
TRAINED = [
    ("llama", 0.0, 20),
    ("llama", 0.1, 20),
    ("qwen2_window", 0.1, 10),
    ("qwen3_tied", 0.0, 10),
    ("gemma2_softcap", 0.1, 10),  # the final soft-cap inside both chunked losses; portable dropout
    ("gemma3_window", 0.0, 10),
    ("phi3_window", 0.1, 10),  # dropout keys of the fused modules (numbers 8 and 9)
]
RESUME_AT = 10


@pytest.fixture(scope="module", params=TRAINED, ids=[f"{m}-dropout{d}" for m, d, _ in TRAINED])
def trained(request, model_dir, tmp_path_factory):
    """Both backends trained from their own initial adapter (nothing injected), with weight decay
    and active clipping; the adapters saved at step 0, at RESUME_AT (with the optimizer state: a
    checkpoint) and at the end."""
    name, dropout, n_steps = request.param
    directory = model_dir(name)
    root = tmp_path_factory.mktemp("trained")
    config = make_config(lora_dropout=dropout, weight_decay=0.1, max_grad_norm=0.5)  # grad norm ~1: clipping
    backends = {"jax": load(JaxBackend, directory, config), "torch": load(TorchBackend, directory, config)}
    windows = list(micro_steps(training_examples(), config, n_steps=n_steps))
    losses: dict[str, list[float]] = {}
    for backend_name, backend in backends.items():
        backend.save_adapter(root / backend_name / "initial")
        losses[backend_name] = train_steps(backend, windows[:RESUME_AT])
        backend.save_adapter(root / backend_name / "checkpoint")
        backend.save_state(root / backend_name / "checkpoint")
        losses[backend_name] += train_steps(backend, windows[RESUME_AT:])
        backend.save_adapter(root / backend_name / "final")
    return {
        "name": name,
        "n_steps": n_steps,
        "config": config,
        "backends": backends,
        "losses": losses,
        "windows": windows,
        "root": root,
        "model_dir": directory,
    }


def test_initial_adapters_are_identical(trained):
    """The core draws the initial adapter: both backends write the very same bytes."""
    root = trained["root"]
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (root / "jax" / "initial" / name).read_bytes() == (root / "torch" / "initial" / name).read_bytes()
    tensors = load_file(str(root / "torch" / "initial" / "adapter_model.safetensors"))
    linears = 4 if trained["name"].startswith("phi3") else 7  # Phi-3: qkv, o, gate_up, down
    assert len(tensors) == 2 * 2 * linears  # A and B of every linear in 2 layers
    assert all(np.abs(v).max() > 0 for k, v in tensors.items() if ".lora_A." in k)


def test_training_losses_match(trained):
    assert {len(w) for w in trained["windows"]} == {1, 2}  # short windows were exercised
    jax_losses, torch_losses = np.array(trained["losses"]["jax"]), np.array(trained["losses"]["torch"])
    assert len(jax_losses) == trained["n_steps"]
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


@pytest.mark.parametrize("trained", TRAINED[:2], ids=["llama-dropout0.0", "llama-dropout0.1"], indirect=True)
@pytest.mark.parametrize("first, then", [("torch", "jax"), ("jax", "torch")])
def test_checkpoint_resumes_on_the_other_backend(trained, first, then):
    """A checkpoint written by one backend at RESUME_AT (adapter + the core's portable AdamW
    state) continues on the other backend along the trajectory of the uninterrupted run."""
    other = {"jax": JaxBackend, "torch": TorchBackend}[then]
    resumed = load(other, trained["model_dir"], trained["config"])
    resumed.load_adapter(trained["root"] / first / "checkpoint")
    resumed.load_state(trained["root"] / first / "checkpoint")
    losses = train_steps(resumed, trained["windows"][RESUME_AT:])
    np.testing.assert_allclose(losses, trained["losses"][first][RESUME_AT:], rtol=RTOL, atol=0)
    # Without the moments the continuation would differ (the check above is not vacuous).
    fresh = load(other, trained["model_dir"], trained["config"])
    fresh.load_adapter(trained["root"] / first / "checkpoint")
    without_state = train_steps(fresh, trained["windows"][RESUME_AT : RESUME_AT + 3])
    assert abs(without_state[-1] - losses[2]) > 100 * RTOL * abs(losses[2])


def test_jax_adapter_loads_in_peft(trained):
    import transformers
    from peft import PeftModel

    adapter = trained["root"] / "jax" / "final"
    architecture = json.loads((trained["model_dir"] / "config.json").read_text())["architectures"][0]
    base = getattr(transformers, architecture).from_pretrained(trained["model_dir"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    batch = random_batch(7)
    with torch.no_grad():
        reference = model(
            input_ids=torch.from_numpy(batch.input_ids).long(),
            attention_mask=torch.from_numpy(batch.attention_mask).long(),
        ).logits.numpy()
    jax_backend = trained["backends"]["jax"]
    jax_backend.load_adapter(adapter)  # its own final weights again, whatever ran before
    real = batch.attention_mask == 1  # as in the logits test: pad positions are each kernel's own
    assert relative_error(jax_backend.logits(batch)[real], reference[real]) < 1e-4


def test_torch_adapter_loads_in_jax(trained):
    # Reuses the trained jax backend (a fresh one would compile again): load_adapter replaces
    # every LoRA array, so what it held before does not matter.
    jax_backend = trained["backends"]["jax"]
    jax_backend.load_adapter(trained["root"] / "torch" / "final")
    batch = random_batch(8)
    real = batch.attention_mask == 1
    assert relative_error(jax_backend.logits(batch)[real], trained["backends"]["torch"].logits(batch)[real]) < 1e-4


@pytest.mark.parametrize("trained", TRAINED[2:], ids=[m for m, _, _ in TRAINED[2:]], indirect=True)  # Llama's: jax/
def test_generate_with_kv_cache_equals_without(trained):
    """jax greedy generation through its KV cache (per-layer windows included: the prompt and
    continuation, 24 tokens, outrun the window of 8) = the argmax of one full forward over
    prompt + continuation, which uses no cache (teacher forcing)."""
    backend = trained["backends"]["jax"]
    backend.load_adapter(trained["root"] / "jax" / "final")
    prompt = [256, 72, 105, 33, 300, 12, 7, 99, 5, 480]
    new = backend.generate(prompt, max_new_tokens=14)
    assert len(new) == 14
    ids = np.array([prompt + new] * 2, np.int32)  # [2, 24]: the shape the other tests' logits compiled
    logits = backend.logits(Batch(ids, np.ones_like(ids), ids))
    assert list(logits[0, len(prompt) - 1 : -1].argmax(-1)) == new

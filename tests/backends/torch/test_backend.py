"""The torch backend on CPU, fp32, with the tiny random Llama that ``random:tiny`` writes.

Run: .venv/bin/pytest tests/backends/torch/test_backend.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from loraswitch.core.config import Config  # noqa: E402
from loraswitch.core.errors import UserError  # noqa: E402
from loraswitch.core.models.random_model import write_random_model  # noqa: E402
from loraswitch.core.types import (  # noqa: E402
    IGNORE_INDEX,
    Batch,
    MicroStep,
    ModelSource,
)

VOCAB = 512  # the tiny shape's vocabulary


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core machine: a second OpenMP thread only spins and waits
    (measured 0.2 s against 3-18 s for ten steps under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ModelSource:
    path = write_random_model(tmp_path_factory.mktemp("tiny"), "tiny", seed=0)
    return ModelSource(name="random:tiny", path=path)


def make_config(**overrides) -> Config:
    values = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, seed=0, precision="fp32", compile="false")
    values.update(overrides)
    return Config(**values)


def make_backend(source: ModelSource, **overrides):
    from loraswitch.backends.torch_peft.backend import TorchBackend

    backend = TorchBackend(device="cpu")
    backend.load(source, make_config(**overrides))
    return backend


def make_batch(rows: list[list[int]], prompt_lengths: list[int]) -> Batch:
    """Right-padded batch; the first ``prompt_lengths[i]`` tokens of row i carry no loss."""
    length = max(len(r) for r in rows)
    ids = np.zeros((len(rows), length), np.int32)
    mask = np.zeros_like(ids)
    labels = np.full_like(ids, IGNORE_INDEX)
    for i, (row, prompt) in enumerate(zip(rows, prompt_lengths)):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
        labels[i, prompt : len(row)] = row[prompt:]
    return Batch(ids, mask, labels)


def sequences(n: int, length: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, length).tolist() for _ in range(n)]


def window(batches: list[Batch], step: int, lr: float) -> list[MicroStep]:
    """One accumulation window, weighted as the core weights it: 1 / targets in the window."""
    total = sum(b.n_targets for b in batches)
    return [MicroStep(b, 1.0 / total, i == len(batches) - 1, lr, step, i, len(batches)) for i, b in enumerate(batches)]


def train(backend, batches: list[Batch], steps: range, lr: float = 1e-2) -> list[float]:
    losses = []
    for step in steps:
        losses.append(sum(float(backend.micro_step(m)) for m in window(batches, step, lr)))
    return losses


def lora_state(backend) -> dict[str, np.ndarray]:
    return {k: p.detach().cpu().numpy().copy() for k, p in backend.lora_parameters().items()}


# ---------------------------------------------------------------- registration


def test_importing_the_plugin_does_not_import_torch():
    code = (
        "import sys, loraswitch.backends.torch_peft as p; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'framework imported'; "
        "seen = []; p.register_backends(register=lambda name, factory, **kw: seen.append((name, kw))); "
        "assert 'torch' not in sys.modules; print(seen)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "('torch', {'requires': ('torch', 'transformers', 'peft'), 'extra': 'torch'" in out.stdout


def test_backend_satisfies_the_protocol(tiny):
    from loraswitch.core.backend import Backend

    backend = make_backend(tiny)
    assert isinstance(backend, Backend)
    facts = backend.describe()
    assert facts["framework"].startswith("torch ") and facts["device"] == "cpu"
    assert facts["precision"] == "fp32" and facts["compile"] is False
    # r=4 on 7 projections of 2 layers (hidden 64, ffn 128, 4 heads of 16, 2 kv heads)
    per_layer = 4 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64))
    assert facts["params_trainable"] == 2 * per_layer
    assert facts["params_total"] > facts["params_trainable"]


def test_random_init_is_seeded_and_bf16_trains_on_cpu(tmp_path):
    """random_init sources (large benchmark shapes) are built by the backend itself, in the run's
    precision; bf16 keeps the LoRA weights (and so AdamW) in fp32 and runs under autocast."""
    path = write_random_model(tmp_path / "shape", "tiny", with_weights=False)
    source = ModelSource(name="random:tiny", path=path, random_init=True, init_seed=3)

    def up_proj(backend):
        return backend.model.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight

    first, again = make_backend(source, precision="bf16"), make_backend(source, precision="bf16")
    other = make_backend(ModelSource(name="random:tiny", path=path, random_init=True, init_seed=4), precision="bf16")
    assert up_proj(first).dtype == torch.bfloat16
    assert torch.equal(up_proj(first), up_proj(again)) and not torch.equal(up_proj(first), up_proj(other))
    assert 0.015 < float(up_proj(first).float().std()) < 0.025  # the config's initializer_range, 0.02
    assert {p.dtype for p in first.lora_parameters().values()} == {torch.float32}
    assert first.describe()["precision"] == "bf16"

    batch = make_batch(sequences(2, 12, seed=8), [3, 3])
    losses = train(first, [batch], range(3), lr=3e-2)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert first.logits(batch).dtype == np.float32


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("extra_modules, factor", [((), 0.9), (("lm_head",), 0.3)])
def test_short_run_lowers_the_loss_on_memorisable_data(tiny, extra_modules, factor):
    """The tiny random model's frozen lm_head (std 0.02, hidden 64) bounds how far logits can
    move, so LoRA on the projections alone only lowers the loss a little; with lm_head also
    adapted (the trainable-head loss path, portable dropout on its gathered rows included) the
    four sequences are memorised. (At lr 3e-2 the lm_head run oscillates: its last loss ranged
    over 0.25-0.6 of the first with the seed.)"""
    projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    backend = make_backend(
        tiny,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        lora_target_modules=projections + list(extra_modules),
    )
    data = sequences(4, 12, seed=1)
    batches = [make_batch(data[:2], [3, 3]), make_batch(data[2:], [3, 3])]
    before = sum(backend.eval_loss(b)[0] for b in batches)
    losses = train(backend, batches, range(30), lr=1e-2)
    after = sum(backend.eval_loss(b)[0] for b in batches)
    assert losses[-1] < factor * losses[0]
    assert after < factor * before


def test_weighted_micro_batches_give_the_gradient_of_the_whole_window(tiny):
    long, short = sequences(1, 16, seed=2)[0], sequences(1, 9, seed=3)[0]
    together = [make_batch([long, short], [2, 6])]
    apart = [make_batch([long], [2]), make_batch([short], [6])]  # 14 and 3 targets: unequal halves

    def accumulated(batches, weights):
        backend = make_backend(tiny)
        loss = sum(
            float(backend.micro_step(MicroStep(b, w, False, 0.0, 0, i, len(batches))))
            for i, (b, w) in enumerate(zip(batches, weights))
        )
        grads = {k: p.grad.clone() for k, p in backend.lora_parameters().items() if p.grad is not None}
        return backend, loss, grads

    one, loss_one, grads_one = accumulated(together, [1 / 17])
    two, loss_two, grads_two = accumulated(apart, [1 / 17, 1 / 17])
    assert loss_one == pytest.approx(loss_two, rel=1e-6)
    assert grads_one.keys() == grads_two.keys() and any(".lora_B." in k for k in grads_one)
    for key in grads_one:
        torch.testing.assert_close(grads_one[key], grads_two[key], rtol=1e-4, atol=1e-7, msg=key)

    # Each micro-batch normalised by its own target count (a per-micro-batch mean) must differ,
    # or this test could not tell the two weightings apart.
    _, _, grads_wrong = accumulated(apart, [1 / 14, 1 / 3])
    assert max(float((grads_one[k] - grads_wrong[k]).abs().max()) for k in grads_one) > 1e-3

    # And the update applied at the window's end is the same.
    for backend, batches in ((one, together), (two, apart)):
        backend.micro_step(MicroStep(batches[-1], 0.0, True, 1e-2, 0, len(batches), len(batches)))
    a, b = lora_state(one), lora_state(two)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6, err_msg=key)


def test_eval_loss_equals_transformers_loss(tiny):
    backend = make_backend(tiny)
    data = sequences(2, 10, seed=4)
    batch = make_batch([data[0], data[1][:7]], [2, 4])
    train(backend, [batch], range(2))  # so that LoRA B is not zero
    total, n = backend.eval_loss(batch)
    assert n == batch.n_targets == 8 + 3

    # The very same peft model, scored by transformers' own loss (mean over targets, padding masked).
    with torch.no_grad():
        out = backend.model.eval()(
            input_ids=torch.from_numpy(batch.input_ids.astype(np.int64)),
            attention_mask=torch.from_numpy(batch.attention_mask.astype(np.int64)),
            labels=torch.from_numpy(batch.labels.astype(np.int64)),
        )
    assert total == pytest.approx(float(out.loss) * n, rel=1e-5)


def test_chunked_cross_entropy_matches_full_logits():
    from loraswitch.backends.torch_peft.loss import target_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False).requires_grad_(False)
    hidden = torch.randn(23, 8, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    chunked = target_cross_entropy(hidden, head, targets, rows=5)  # 5 chunks, the last one short
    (grad_chunked,) = torch.autograd.grad(chunked * 0.3, hidden)
    full = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    (grad_full,) = torch.autograd.grad(full * 0.3, hidden)
    assert float(chunked.detach()) == pytest.approx(float(full.detach()), rel=1e-6)
    torch.testing.assert_close(grad_chunked, grad_full, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- adapters and state


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft probing transformers 5
def test_saved_adapter_loads_in_peft_with_the_same_logits(tiny, tmp_path):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    backend = make_backend(tiny, lora_dropout=0.1)
    data = sequences(2, 12, seed=5)
    batch = make_batch([data[0], data[1][:8]], [3, 3])
    train(backend, [batch], range(3))
    backend.save_adapter(tmp_path / "adapter")

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(config["target_modules"]) and len(config["target_modules"]) == 7
    assert config["base_model_name_or_path"] == "random:tiny"
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "loraswitch_base.json",  # the base's fingerprint, checked by `loraswitch merge`
    ]
    from loraswitch.core.export.fingerprint import base_fingerprint, read_base_fingerprint

    assert read_base_fingerprint(tmp_path / "adapter") == base_fingerprint(tiny.path)

    base = LlamaForCausalLM.from_pretrained(str(tiny.path), dtype=torch.float32, attn_implementation="sdpa")
    model = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        theirs = model(
            input_ids=torch.from_numpy(batch.input_ids.astype(np.int64)),
            attention_mask=torch.from_numpy(batch.attention_mask.astype(np.int64)),
        ).logits.numpy()
    ours = backend.logits(batch)
    assert ours.dtype == np.float32 and ours.shape == (2, 12, VOCAB)
    assert np.abs(ours - theirs).max() < 1e-5
    # The adapter changed the model, so the comparison above compared something.
    with torch.no_grad(), model.disable_adapter():
        plain = model(input_ids=torch.from_numpy(batch.input_ids.astype(np.int64))).logits.numpy()
    assert np.abs(ours - plain).max() > 1e-3


def test_resume_from_adapter_and_state_continues_identically(tiny, tmp_path):
    data = sequences(4, 10, seed=6)
    batches = [make_batch(data[:2], [2, 5]), make_batch(data[2:], [4, 1])]
    settings = dict(lora_dropout=0.2, max_grad_norm=1.0, weight_decay=0.01)

    straight = make_backend(tiny, **settings)
    train(straight, batches, range(3))
    straight.save_adapter(tmp_path / "ckpt")
    straight.save_state(tmp_path / "ckpt")
    expected_losses = train(straight, batches, range(3, 6))

    resumed = make_backend(tiny, **settings)
    resumed.load_adapter(tmp_path / "ckpt")
    resumed.load_state(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "optimizer.json").read_text())["step"] == 3
    losses = train(resumed, batches, range(3, 6))

    assert losses == pytest.approx(expected_losses, rel=1e-6)
    a, b = lora_state(straight), lora_state(resumed)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-7, err_msg=key)

    # Without the optimizer state the continuation differs (the check above is not vacuous).
    fresh = make_backend(tiny, **settings)
    fresh.load_adapter(tmp_path / "ckpt")
    train(fresh, batches, range(3, 6))
    c = lora_state(fresh)
    assert max(np.abs(a[k] - c[k]).max() for k in a) > 1e-4


def test_state_and_adapter_of_another_shape_are_refused(tiny, tmp_path):
    small = make_backend(tiny)
    small.save_adapter(tmp_path / "r4")
    small.save_state(tmp_path / "r4")
    other = make_backend(tiny, lora_r=8, lora_alpha=16)
    with pytest.raises(UserError, match=r"optimizer\.json: .*lora_A.* has shape \[4, 64\]"):
        other.load_state(tmp_path / "r4")
    with pytest.raises(UserError, match=r"adapter_config\.json: r = 4 but this run has lora_r = 8; set lora_r: 4"):
        other.load_adapter(tmp_path / "r4")
    fewer = make_backend(tiny, lora_target_modules=["q_proj", "v_proj"])
    with pytest.raises(UserError, match=r"target_modules = .* but this run has lora_target_modules"):
        fewer.load_adapter(tmp_path / "r4")


# ---------------------------------------------------------------- generation


def test_generate_greedy_matches_argmax_without_cache_and_sampling_is_seeded(tiny):
    backend = make_backend(tiny)
    prompt = [5, 17, 42, 7]
    new = backend.generate(prompt, max_new_tokens=6)
    assert len(new) == 6
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            logits = backend.model(input_ids=torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    assert new == ids[len(prompt) :]
    assert backend.generate(prompt, max_new_tokens=6, stop_ids=(new[2],)) == new[: new.index(new[2])]

    first = backend.generate(prompt, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    assert first == backend.generate(prompt, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    assert len(first) == 8 and all(0 <= t < VOCAB for t in first)
    others = {tuple(backend.generate(prompt, max_new_tokens=8, temperature=1.0, seed=s)) for s in range(4)}
    assert len(others) > 1


# ---------------------------------------------------------------- bad input


def test_unknown_target_module_names_the_key_and_the_choices(tiny):
    with pytest.raises(
        UserError,
        match=r"lora_target_modules: 'qkv_proj' .* down_proj, gate_proj, k_proj, "
        r"lm_head, o_proj, q_proj, up_proj, v_proj",
    ):
        make_backend(tiny, lora_target_modules=["q_proj", "qkv_proj"])


def test_weights_that_do_not_fit_config_are_named(tiny, tmp_path):
    from safetensors.numpy import load_file, save_file

    bad = write_random_model(tmp_path / "extra", "tiny", seed=0)
    weights = load_file(str(bad / "model.safetensors"))
    weights["model.layers.0.mlp.extra_proj.weight"] = np.zeros((2, 2), np.float32)
    save_file(weights, str(bad / "model.safetensors"))
    with pytest.raises(UserError, match=r"model\.safetensors: unexpected tensor 'model\.layers\.0\.mlp\.extra_proj"):
        make_backend(ModelSource(name="extra", path=bad))

    norm = write_random_model(tmp_path / "norm", "tiny", seed=0)
    weights = load_file(str(norm / "model.safetensors"))
    weights["model.norm.weight"] = np.ones(65, np.float32)
    save_file(weights, str(norm / "model.safetensors"))
    with pytest.raises(UserError, match=r"model\.safetensors: tensor 'model\.norm\.weight' has shape \[65\]"):
        make_backend(ModelSource(name="norm", path=norm))


def test_unsupported_architecture_is_named(tmp_path):
    path = write_random_model(tmp_path / "gpt2", "tiny", seed=0)
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"config\.json: unsupported architecture \['GPT2LMHeadModel'\]"):
        make_backend(ModelSource(name="gpt2", path=path))


def test_cuda_asked_for_where_there_is_none(tiny):
    from loraswitch.backends.torch_peft.backend import TorchBackend

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="LORASWITCH_TORCH_DEVICE=cuda: CUDA is not available"):
        TorchBackend(device="cuda").load(tiny, make_config())

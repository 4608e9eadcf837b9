"""Gemma 2's soft-capping where the parity test cannot isolate it: each backend's chunked
cross-entropy (which never materialises all logits, and computes its gradient by hand) equals
the cross-entropy of cap * tanh(logits / cap) by autodiff, gradient included; the caps of the
parity model really change transformers' numbers (so matching them is not vacuous); and both
backends say in describe() that the attention ran on an exact path, not a fused kernel.

Run: .venv/bin/pytest tests/backends/test_softcap.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.transformers_models import write_transformers_model

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from loraswitch.backends.jax_flax.backend import JaxBackend  # noqa: E402
from loraswitch.backends.jax_flax.model import chunked_cross_entropy_sum  # noqa: E402
from loraswitch.backends.torch_peft.backend import TorchBackend  # noqa: E402
from loraswitch.backends.torch_peft.loss import target_cross_entropy  # noqa: E402
from loraswitch.core.config import Config  # noqa: E402
from loraswitch.core.types import ModelSource  # noqa: E402

CAP = 1.5
SOFTCAPS = dict(attn_logit_softcapping=2.0, final_logit_softcapping=CAP)


def _problem(seed=0, n=24, d=16, vocab=40):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(0, 1, (n, d)).astype(np.float32)
    weight = rng.normal(0, 0.5, (vocab, d)).astype(np.float32)
    targets = rng.integers(0, vocab, n)
    return hidden, weight, targets


def test_torch_chunked_loss_and_gradient_apply_the_cap():
    hidden, weight, targets = _problem()
    h = torch.tensor(hidden, requires_grad=True)
    head = torch.nn.Linear(16, 40, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weight))
    head.requires_grad_(False)
    t = torch.tensor(targets)
    loss = target_cross_entropy(h, head, t, rows=5, softcap=CAP)  # 5 rows a chunk: several chunks
    loss.backward()
    h_ref = torch.tensor(hidden, requires_grad=True)
    logits = torch.tanh((h_ref @ head.weight.t()) / CAP) * CAP
    reference = torch.nn.functional.cross_entropy(logits, t, reduction="sum")
    reference.backward()
    assert abs(loss.item() - reference.item()) < 1e-5 * reference.item()
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-5, atol=1e-6)
    uncapped = target_cross_entropy(torch.tensor(hidden), head, t, rows=5)
    assert abs(uncapped.item() - reference.item()) > 1e-2 * reference.item()  # the cap changes the loss


def test_jax_chunked_loss_and_gradient_apply_the_cap():
    import jax.numpy as jnp

    hidden, weight, targets = _problem()
    h, w, t = jnp.asarray(hidden)[None], jnp.asarray(weight), jnp.asarray(targets)[None]

    def reference(h):
        logits = jnp.tanh((h @ w.T) / CAP) * CAP
        lse = jax.nn.logsumexp(logits, axis=-1)
        return jnp.sum(lse - jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0])

    ours, grad = jax.value_and_grad(lambda h: chunked_cross_entropy_sum(h, w, t, 5, CAP))(h)
    expected, expected_grad = jax.value_and_grad(reference)(h)
    assert abs(float(ours) - float(expected)) < 1e-5 * float(expected)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), rtol=1e-5, atol=1e-6)
    assert abs(float(chunked_cross_entropy_sum(h, w, t, 5)) - float(expected)) > 1e-2 * float(expected)


@pytest.fixture(scope="module")
def gemma2_dir(tmp_path_factory):
    return write_transformers_model(
        tmp_path_factory.mktemp("gemma2"), "Gemma2ForCausalLM", seed=8, head_dim=16, sliding_window=8, **SOFTCAPS
    )


def test_the_caps_change_transformers_logits(gemma2_dir):
    import transformers

    ids = torch.tensor(np.random.default_rng(0).integers(0, 512, (1, 20)))
    model = transformers.Gemma2ForCausalLM.from_pretrained(gemma2_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        capped = model(ids).logits
        for key in SOFTCAPS:
            setattr(model.config, key, None)
        plain = model(ids).logits
    assert float((capped - plain).abs().max()) > 1e-2 * float(plain.abs().max())


def test_describe_names_the_exact_attention_path(gemma2_dir):
    config = Config(lora_r=4, lora_alpha=8, precision="fp32")
    source = ModelSource(name=str(gemma2_dir), path=gemma2_dir)
    torch_backend = TorchBackend(device="cpu")
    torch_backend.load(source, config, train=False)
    assert torch_backend.describe()["attention"].startswith("eager (exact: attention-logit soft-capping")
    jax_backend = JaxBackend()
    jax_backend.load(source, config, train=False)
    assert jax_backend.describe()["attention"].startswith("xla (exact: attention-logit soft-capping")


def test_torch_describe_names_the_masked_path_of_sliding_window_layers(tmp_path):
    """Gemma 3's sliding layers take SDPA with an explicit window mask, not the causal call;
    describe() says so (and a model without windows does not)."""
    config = Config(lora_r=4, lora_alpha=8, precision="fp32")
    gemma3 = write_transformers_model(
        tmp_path / "g3", "Gemma3ForCausalLM", seed=1, sliding_window_pattern=2, head_dim=16, sliding_window=8
    )
    qwen3 = write_transformers_model(tmp_path / "q3", "Qwen3ForCausalLM", seed=1, head_dim=16)
    described = {}
    for name, path in (("gemma3", gemma3), ("qwen3", qwen3)):
        backend = TorchBackend(device="cpu")
        backend.load(ModelSource(name=name, path=path), config, train=False)
        described[name] = backend.describe()["attention"]
    assert "sliding-window layers: sdpa with an explicit window mask" in described["gemma3"]
    assert described["qwen3"] == "sdpa"

"""The jax backend's fused projections (one matrix product for the linears that share an input,
LoRA B products folded in, a hand-written VJP) compute what one call per linear computes: the
same outputs and the same gradients, with and without LoRA on each linear, with dropout, and with
biases on some of the linears (Qwen2's q/k/v)."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
nnx = pytest.importorskip("flax.nnx")

from loraswitch.backends.jax_flax.lora import LoRALinear, dropout, fused_projections  # noqa: E402
from loraswitch.core.adapters.dropout import key_table  # noqa: E402


def _linear(rng, d_in, d_out, lora, bias):
    kernel = jnp.asarray(rng.normal(size=(d_in, d_out)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(d_out,)), jnp.float32) if bias else None
    if not lora:
        return LoRALinear(kernel, bias=b)
    return LoRALinear(
        kernel,
        jnp.asarray(rng.normal(size=(d_in, 4)), jnp.float32),
        jnp.asarray(rng.normal(size=(4, d_out)), jnp.float32),
        bias=b,
        scaling=2.0,
        dropout_rate=0.3,
    )


def _keys(kind: str, n: int) -> list:
    """Per-linear dropout keys: none, jax PRNG keys (framework masks) or rows of the core's
    portable key table (uint32 [2] each)."""
    if kind == "none":
        return [None] * n
    if kind == "framework":
        return [jax.random.key(i) for i in range(n)]
    table = key_table(0, 1, 0, 1)[0]
    return [jnp.asarray(table[i]) for i in range(n)]


@pytest.mark.parametrize("layout", [(True, True, True), (True, False, True), (False,), (True,)])
@pytest.mark.parametrize(
    "masks, biases", [("none", "none"), ("framework", "first"), ("portable", "all")]
)  # every dropout mask kind and every bias layout, without the full product of the two
def test_fused_equals_one_call_per_linear(layout, masks, biases):
    rng = np.random.default_rng(len(layout) + 10 * (masks != "none"))
    linears = [
        _linear(rng, 16, 8 if i == 0 else 4, lora, bias=biases == "all" or (biases == "first" and i == 0))
        for i, lora in enumerate(layout)
    ]
    keys = _keys(masks, len(linears))
    x = jnp.asarray(rng.normal(size=(2, 3, 16)), jnp.float32)
    graphdef, lora_state, frozen = nnx.split(nnx.List(linears), nnx.LoRAParam, ...)

    def run(fused):
        def loss(lora_state, x):
            mods = list(nnx.merge(graphdef, lora_state, frozen))
            ys = fused_projections(x, mods, keys) if fused else [m(x, k) for m, k in zip(mods, keys)]
            return sum(jnp.sum(jnp.sin(y) * (i + 1)) for i, y in enumerate(ys)), ys

        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(lora_state, x)

    (_, fused_out), fused_grads = run(True)
    (_, plain_out), plain_grads = run(False)
    for got, want in zip(fused_out, plain_out):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    leaves, expected = jax.tree.leaves(fused_grads), jax.tree.leaves(plain_grads)
    assert len(leaves) == len(expected) == 1 + 2 * sum(layout)  # x, then A and B of each LoRA linear
    for got, want in zip(leaves, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("masks", ["framework", "portable"])
def test_dropout_rate_and_scale(masks):
    x = jnp.ones((1000, 1000), jnp.bfloat16)
    y = dropout(x, 0.05, _keys(masks, 1)[0])
    assert y.dtype == jnp.bfloat16
    assert float(jnp.mean(y == 0)) == pytest.approx(0.05, abs=0.002)
    assert set(np.unique(np.asarray(y, np.float32)).tolist()) == {0.0, float(jnp.bfloat16(1 / 0.95))}
    assert dropout(x, 0.05, None) is x


def _residuals_and_grads(tmp_path, monkeypatch, remat):
    """What the backward pass of the tiny model keeps under ``remat``, and its LoRA gradients."""
    import contextlib
    import io

    from jax.ad_checkpoint import print_saved_residuals

    from loraswitch.backends.jax_flax.backend import JaxBackend
    from loraswitch.core.config import Config
    from loraswitch.core.models.random_model import write_random_model
    from loraswitch.core.types import ModelSource

    monkeypatch.setenv("LORASWITCH_JAX_REMAT", remat)
    directory = tmp_path / "tiny"
    if not directory.exists():
        write_random_model(directory, "tiny", seed=0)
    backend = JaxBackend()
    backend.load(
        ModelSource(name="tiny", path=directory),
        Config(lora_r=4, lora_alpha=8.0, lora_dropout=0.05, precision="fp32", seed=0),
        train=True,
    )
    lora = jax.tree.map(lambda a: a + 0.01, backend.lora)  # B != 0, so every LoRA path carries gradient
    ids = np.random.default_rng(0).integers(0, 500, (2, 32)).astype(np.int32)

    def loss(lora):
        model = nnx.merge(backend.graphdef, lora, backend.frozen)
        return model.loss_sum(ids, np.ones_like(ids), ids, dropout_key=jax.random.key(0))

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_saved_residuals(loss, lora)
    return printed.getvalue(), jax.tree.leaves(jax.jit(jax.grad(loss))(lora))


def test_dots_fused_policy_saves_the_fused_products(tmp_path, monkeypatch):
    """Plain ``dots`` cannot see the products inside the custom VJP (so backward recomputes
    them); ``dots+fused`` keeps them, and every policy gives the same gradients."""
    # tiny: q, k, v = 64 + 32 + 32 wide, gate + up = 2 x 128 wide
    fused_outputs = ("f32[2,2,32,128] output of scan", "f32[2,2,32,256] output of scan")
    dots, dots_grads = _residuals_and_grads(tmp_path, monkeypatch, "dots")
    kept, kept_grads = _residuals_and_grads(tmp_path, monkeypatch, "dots+fused")
    _, plain_grads = _residuals_and_grads(tmp_path, monkeypatch, "none")
    assert not any(s in dots for s in fused_outputs)
    assert all(s in kept for s in fused_outputs)
    for got, other, want in zip(kept_grads, dots_grads, plain_grads):
        scale = 1e-5 * float(jnp.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=scale)
        np.testing.assert_allclose(other, want, rtol=0, atol=scale)

"""torch, JAX and numpy draw the same initial adapter and the same dropout masks, bit for bit.

The core owns both (core/adapters/init.py, dropout.py); each backend only computes them in its
framework: torch in int64 arithmetic, JAX in uint32, the numpy example with the numpy reference.

Run: .venv/bin/pytest tests/backends/test_identical_init_and_masks.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
torch = pytest.importorskip("torch")
pytest.importorskip("peft")

import jax.numpy as jnp  # noqa: E402

from loraswitch.backends.jax_flax import lora as jax_lora  # noqa: E402
from loraswitch.backends.jax_flax.trees import named_leaves  # noqa: E402
from loraswitch.backends.torch_peft import dropout as torch_dropout  # noqa: E402
from loraswitch.core.adapters import dropout as D  # noqa: E402
from loraswitch.core.adapters.init import initial_adapter, lora_a  # noqa: E402
from loraswitch.core.adapters.modules import module_paths  # noqa: E402
from loraswitch.core.adapters.peft_format import tensor_name  # noqa: E402
from loraswitch.core.config import Config  # noqa: E402
from loraswitch.core.models.random_model import write_random_model  # noqa: E402
from loraswitch.core.types import ModelSource  # noqa: E402

# (seed, step, micro, layer, module, [rows, tokens, features], rate, first row)
CASES = [
    (0, 0, 0, 0, 0, (2, 7, 16), 0.1, 0),
    (1, 5, 3, 1, 6, (3, 5, 64), 0.05, 0),
    (2**40 + 3, 17, 1, 3, 4, (1, 33, 8), 0.5, 0),
    (9, 2, 0, 0, 7, (2, 4, 96), 0.3, 3),
    (123456, 1000, 7, 11, 2, (4, 16, 128), 0.999, 2),
]


def torch_out(x, seed, step, micro, layer, module, rate, first_row):
    keys = torch_dropout.KeyTable(seed, layer + 1, torch.device("cpu"), first_row)
    keys.set_step(step, micro)
    dropout = torch_dropout.PortableDropout(rate, layer, module, keys).train()
    return dropout(torch.from_numpy(x)).numpy()


def jax_out(x, seed, step, micro, layer, module, rate, first_row):
    """The jax backend sees the global micro-batch: a block that starts at ``first_row`` is
    those rows of a bigger batch."""
    whole = np.concatenate([np.zeros((first_row, *x.shape[1:]), x.dtype), x])
    key = jnp.asarray(D.key_table(seed, step, micro, layer + 1)[layer, module])
    return np.asarray(jax.jit(jax_lora.dropout, static_argnums=1)(jnp.asarray(whole), rate, key))[first_row:]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_masks_are_identical_in_torch_jax_and_numpy(case):
    seed, step, micro, layer, module, shape, rate, first_row = case
    keep = D.keep_mask(seed, step, micro, layer, module, shape, rate, first_row)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32) + 0.5  # no zeros: a zero out means dropped
    reference = D.apply(x, keep, rate)
    ours = torch_out(x, seed, step, micro, layer, module, rate, first_row)
    theirs = jax_out(x, seed, step, micro, layer, module, rate, first_row)
    assert np.array_equal(ours != 0, keep) and np.array_equal(theirs != 0, keep)
    assert np.array_equal(ours, reference) and np.array_equal(theirs, reference)  # the same fp32 scale too
    assert 0 < keep.mean() < 1 or keep.size < 64


def test_the_numpy_example_uses_the_same_masks():
    model = pytest.importorskip("loraswitch_numpy.model")
    mask = model.dropout_mask((2, 9, 32), 0.1, 4, 6, 1, np.float32)
    keep = D.keep_mask(4, 6, 1, *model.DROPOUT_SITE, (2, 9, 32), 0.1)
    assert np.array_equal(mask != 0, keep) and set(np.unique(mask)) == {0.0, np.float32(D.scale(0.1))}


def test_torch_compile_reads_new_keys_without_recompiling():
    """The key table is a tensor the compiled graph reads, refreshed in place each micro-step:
    the masks change with the step, the graph does not (aot_eager: Dynamo's capture, no C++)."""
    keys = torch_dropout.KeyTable(0, 1, torch.device("cpu"))
    dropout = torch_dropout.PortableDropout(0.5, 0, 0, keys).train()
    compiled = torch.compile(dropout, backend="aot_eager", fullgraph=True)
    x = torch.ones(2, 8, 16)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(3):
            keys.set_step(step, 0)
            expected = D.apply(np.ones((2, 8, 16), np.float32), D.keep_mask(0, step, 0, 0, 0, (2, 8, 16), 0.5), 0.5)
            assert np.array_equal(compiled(x).numpy(), expected)
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ModelSource:
    return ModelSource(name="random:tiny", path=write_random_model(tmp_path_factory.mktemp("tiny"), "tiny", seed=0))


def test_backends_start_from_the_cores_initial_adapter(tiny):
    from loraswitch.backends.jax_flax.backend import JaxBackend
    from loraswitch.backends.jax_flax.lora_layout import module_features, to_peft
    from loraswitch.backends.torch_peft.backend import TorchBackend

    config = Config(lora_r=4, lora_alpha=8, seed=11, precision="fp32", compile="false", lora_dropout=0.1)
    torch_backend = TorchBackend(device="cpu")
    torch_backend.load(tiny, config, train=False)
    jax_backend = JaxBackend()
    jax_backend.load(tiny, config, train=False)
    expected = initial_adapter(11, module_features(jax_backend.spec, jax_backend.targets), 4)
    assert len(expected) == 2 * 2 * 7
    ours = {k: p.detach().numpy() for k, p in torch_backend.lora_parameters().items()}
    lora = {k: np.asarray(v) for k, v in named_leaves(jax_backend.lora).items()}
    theirs = to_peft(lora, jax_backend.spec, jax_backend.targets)
    assert sorted(ours) == sorted(theirs) == sorted(expected)
    for name, value in expected.items():
        assert np.array_equal(ours[name], value) and np.array_equal(theirs[name], value), name
    first = tensor_name(module_paths(2, ["q_proj"])[0], "A")
    assert np.array_equal(expected[first], lora_a(11, "model.layers.0.self_attn.q_proj", 4, 64))
    # peft's own dropout modules were replaced by the portable one
    dropouts = [m for m in torch_backend.model.modules() if isinstance(m, torch_dropout.PortableDropout)]
    assert len(dropouts) == 14 and {(m.layer, m.module) for m in dropouts} == {(i, j) for i in (0, 1) for j in range(7)}

"""random:<shape> is one model: the numpy file, torch's device draw (whole, in FSDP rows, and
the bench's hf-reference), jax's device draw (one device and sharded) agree bit for bit.
(Each framework once drew its own: FSDP torch trained another model than unsharded torch.)"""

import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch

from loraswitch.core.models import random_values
from loraswitch.core.models.random_model import random_weights, write_random_model
from loraswitch.core.models.shapes import shape_config, tensor_shapes
from loraswitch.core.types import ModelSource

SHAPES = ["tiny", "tiny-qwen2", "tiny-qwen3"]


def test_values_depend_on_seed_and_name_only():
    a = random_values.numpy_values(1, "model.layers.0.mlp.up_proj.weight", (64, 32))
    assert np.array_equal(a, random_values.numpy_values(1, "model.layers.0.mlp.up_proj.weight", (64, 32)))
    assert not np.array_equal(a, random_values.numpy_values(2, "model.layers.0.mlp.up_proj.weight", (64, 32)))
    assert not np.array_equal(a, random_values.numpy_values(1, "model.layers.1.mlp.up_proj.weight", (64, 32)))
    # the first elements do not depend on the tensor's shape (row-major index only)
    assert np.array_equal(a.ravel()[:100], random_values.numpy_values(1, "model.layers.0.mlp.up_proj.weight", (100,)))
    assert abs(float(a.std()) - random_values.INIT_STD) < 0.002 and abs(float(a.mean())) < 0.002
    assert np.all(random_values.numpy_values(1, "model.norm.weight", (8,)) == 1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_device_draw_is_the_file(tmp_path, shape, dtype):
    from loraswitch.backends.torch_peft.model import Placement, load_base_model

    path = write_random_model(tmp_path / shape, shape, seed=3, with_weights=False)
    source = ModelSource(name=f"random:{shape}", path=path, random_init=True, init_seed=3)
    model = load_base_model(source, Placement(torch.device("cpu"), dtype, False))
    reference = random_weights(shape_config(shape), seed=3)
    drawn = dict(model.named_parameters())
    assert set(drawn) <= set(reference)
    for name, param in drawn.items():
        want = torch.from_numpy(reference[name]).to(dtype)
        assert torch.equal(param.detach(), want), name


def test_torch_rows_of_a_shard_are_rows_of_the_whole():
    from loraswitch.backends.torch_peft.random_init import fill_rows

    name, shape = "model.embed_tokens.weight", (10, 6)
    whole, part = torch.empty(shape), torch.empty(3, 6)
    fill_rows(whole, 7, name, shape)
    fill_rows(part, 7, name, shape, first_row=4)
    assert torch.equal(whole[4:7], part)
    assert torch.equal(whole, torch.from_numpy(random_values.numpy_values(7, name, shape)))


JAX_DRAW = """
import json, sys
import jax, numpy as np
from loraswitch.backends.jax_flax.sharding import make_layout
from loraswitch.backends.jax_flax.weights import random_weights
from loraswitch.core.models import families
from loraswitch.core.models.shapes import shape_config
shape, fsdp = sys.argv[1], int(sys.argv[2])
config = shape_config(shape)
spec = families.family_of(config, "config.json").spec(config, "config.json")
weights = random_weights(spec, "float32", 3, make_layout({"fsdp": fsdp} if fsdp > 1 else None))
np.savez(sys.argv[3], **{k: np.asarray(v) for k, v in weights.items()})
print(json.dumps({k: not v.sharding.is_fully_replicated for k, v in weights.items()}))
"""


@pytest.mark.parametrize("shape", ["tiny-qwen3"])
def test_jax_device_draw_is_the_file_sharded_or_not(tmp_path, shape):
    reference = random_weights(shape_config(shape), seed=3)
    layers = shape_config(shape)["num_hidden_layers"]
    for fsdp in (1, 2):
        env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PATH": ""}
        out = subprocess.run(
            [sys.executable, "-c", JAX_DRAW, shape, str(fsdp), str(tmp_path / "w.npz")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert any(json.loads(out.stdout).values()) == (fsdp > 1)  # sharded over two devices, or replicated
        drawn = np.load(tmp_path / "w.npz")
        covered = set()
        for name in drawn.files:
            if name in reference:
                assert np.array_equal(drawn[name], reference[name]), name
                covered.add(name)
                continue
            for i in range(layers):  # stacked [L, in, out] of HF's [out, in]
                hf = reference[f"model.layers.{i}.{name}"]
                assert np.array_equal(drawn[name][i], hf.T if hf.ndim == 2 else hf), (name, i)
                covered.add(f"model.layers.{i}.{name}")
        assert covered == set(tensor_shapes(shape_config(shape)))


def test_bf16_cast_is_round_to_nearest_even_of_the_fp32_values():
    from loraswitch.backends.torch_peft.random_init import fill_rows

    name, shape = "model.layers.0.self_attn.q_proj.weight", (64, 64)
    out = torch.empty(shape, dtype=torch.bfloat16)
    fill_rows(out, 0, name, shape)
    want = random_values.numpy_values(0, name, shape).astype(ml_dtypes.bfloat16)
    assert np.array_equal(out.view(torch.uint16).numpy(), want.view(np.uint16))

"""Base weights for the JAX model: read from a HF safetensors directory, or drawn on the device.

Safetensors files are memory-mapped and parsed here with numpy (+ ml_dtypes for bf16, which
safetensors' own numpy loader cannot return), so no framework is involved. Each tensor is placed
with its sharding (sharding.py) shard by shard: a device's block is read from the mapped file,
transposed from HF's [out, in] to [in, out], cast to the compute dtype and stacked over layers on
the host, then copied to that device. With fsdp > 1 no device and no host ever holds the whole
model, only the blocks of its own devices (one tensor's at a time). Which tensors exist (biases,
q/k norms, a tied head) is the family's ModelSpec's ``tensor_shapes``/``layer_tensors``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from loraswitch.backends.jax_flax.sharding import Layout, put_from
from loraswitch.core.errors import UserError
from loraswitch.core.files.safetensors_file import read_header
from loraswitch.core.models.families import ModelSpec
from loraswitch.core.models.model_dir import weight_files

# The float dtypes core/models/model_dir.py accepts for base weights (it refuses the others).
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}
INIT_STD = 0.02  # as core.random_model and HF's initializer_range


class SafetensorsFiles:
    """Name -> memory-mapped numpy array over some .safetensors files; ``path`` names them in errors."""

    def __init__(self, files: list[Path], path: Path):
        self.path = path
        self.entries: dict[str, tuple[Path, int, dict]] = {}
        for file in files:
            header = read_header(file)
            with open(file, "rb") as f:
                data_start = 8 + struct.unpack("<Q", f.read(8))[0]
            for name, info in header.items():
                self.entries[name] = (file, data_start, info)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.entries:
            raise UserError(f"{self.path}: tensor {name!r} is missing from the safetensors weights")
        file, data_start, info = self.entries[name]
        if tuple(info["shape"]) != tuple(shape):
            raise UserError(
                f"{file}: tensor {name!r} has shape {list(info['shape'])} but config.json implies {list(shape)}"
            )
        if info["dtype"] not in _DTYPES:
            raise UserError(f"{file}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        return np.memmap(file, dtype=dtype, mode="r", offset=data_start + start, shape=tuple(shape))


def load_weights(path: Path, spec: ModelSpec, dtype, layout: Layout) -> dict[str, jax.Array]:
    """The arrays ``model.DecoderLM`` takes, read from the HF names of ``path``, placed on ``layout``."""
    files = SafetensorsFiles(weight_files(path), path)
    np_dtype = np.dtype(jnp.dtype(dtype))
    L = spec.num_layers

    def plain(name: str, shape: tuple[int, ...]) -> jax.Array:
        sharding = layout.weight(shape, stacked=False)
        return put_from(shape, sharding, lambda index: files.get(name, shape)[index].astype(np_dtype))

    def stacked(names: list[str], shape: tuple[int, ...], transpose: bool) -> jax.Array:
        """[L, *shape] from one tensor per layer (HF [out, in] kernels transposed to [in, out])."""
        full = (L, *shape)
        hf_shape = shape[::-1] if transpose else shape

        def read(index):
            layers, rest = range(L)[index[0]], index[1:]
            hf_index = rest[::-1] if transpose else rest
            block = np.empty((len(layers), *(len(range(n)[s]) for n, s in zip(shape, rest))), np_dtype)
            for j, i in enumerate(layers):  # one copy: mapped file -> block, transposed and cast
                part = files.get(names[i], hf_shape)[hf_index]
                block[j] = part.T if transpose else part
            return block

        return put_from(full, layout.weight(full, stacked=True), read)

    whole = ["model.embed_tokens.weight", "model.norm.weight"] + (
        [] if spec.tie_word_embeddings else ["lm_head.weight"]
    )
    shapes = spec.tensor_shapes()
    out = {name: plain(name, shapes[name]) for name in whole}
    for name, hf_shape in spec.layer_tensors().items():
        kernel = len(hf_shape) == 2  # linear weights: transposed to [in, out]
        shape = hf_shape[::-1] if kernel else hf_shape
        out[name] = stacked([f"model.layers.{i}.{name}" for i in range(L)], shape, transpose=kernel)
    return out


def random_weights(spec: ModelSpec, dtype, seed: int, layout: Layout) -> dict[str, jax.Array]:
    """N(0, 0.02) matrices and biases and unit norm scales (Gemma's stored weight 0) drawn directly on the devices in the
    compute dtype, each device drawing only its shards, for shapes too large to be worth
    writing to disk (``ModelSource.random_init``)."""
    L = spec.num_layers
    shapes = {name: shape for name, shape in spec.tensor_shapes().items() if not name.startswith("model.layers.")}
    for name, hf_shape in spec.layer_tensors().items():
        shapes[name] = (L, *(hf_shape[::-1] if len(hf_shape) == 2 else hf_shape))
    root = jax.random.PRNGKey(seed)
    dtype = jnp.dtype(dtype)
    out = {}
    for i, (name, shape) in enumerate(shapes.items()):
        if name.endswith("norm.weight"):
            out[name] = _full(shape, spec.norm_init, dtype, layout.replicated)
        else:
            sharding = layout.weight(shape, stacked=name in spec.layer_tensors())
            out[name] = _normal(jax.random.fold_in(root, i), shape, dtype, sharding)
    return out


def _full(shape, value, dtype, sharding):
    return jax.jit(lambda: jnp.full(shape, value, dtype), out_shardings=sharding)()


def _normal(key, shape, dtype, sharding):
    # jit so the fp32 draw is fused into the cast: only the compute-dtype array is materialised,
    # and only the shards of each device.
    return jax.jit(
        lambda k: (jax.random.normal(k, shape, jnp.float32) * INIT_STD).astype(dtype), out_shardings=sharding
    )(key)

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

import functools
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from loraswitch.backends.jax_flax.sharding import Layout, put_from
from loraswitch.core.errors import UserError
from loraswitch.core.files.safetensors_file import read_header
from loraswitch.core.models import random_values
from loraswitch.core.models.families import ModelSpec
from loraswitch.core.models.model_dir import weight_files

# The float dtypes core/models/model_dir.py accepts for base weights (it refuses the others).
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}


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


def _unstacked_names(spec: ModelSpec) -> list[str]:
    """The tensors that are not per layer: embedding, final norm and (untied) lm_head."""
    return ["model.embed_tokens.weight", "model.norm.weight"] + ([] if spec.tie_word_embeddings else ["lm_head.weight"])


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

    shapes = spec.tensor_shapes()
    out = {name: plain(name, shapes[name]) for name in _unstacked_names(spec)}
    for name, hf_shape in spec.layer_tensors().items():
        kernel = len(hf_shape) == 2  # linear weights: transposed to [in, out]
        shape = hf_shape[::-1] if kernel else hf_shape
        out[name] = stacked([f"model.layers.{i}.{name}" for i in range(L)], shape, transpose=kernel)
    return out


def random_weights(spec: ModelSpec, dtype, seed: int, layout: Layout) -> dict[str, jax.Array]:
    """The core's random values (core/models/random_values.py) drawn directly on the devices in
    the compute dtype, each device computing only its shards: for shapes too large to be worth
    writing to disk (``ModelSource.random_init``). The same model as every other backend's."""
    L = spec.num_layers
    shapes = spec.tensor_shapes()
    out = {}
    for name in _unstacked_names(spec):
        keys = np.array([random_values.tensor_keys(seed, name)], np.uint32)  # [1, 2]
        out[name] = _draw(name, shapes[name], dtype, keys, layout.weight(shapes[name], stacked=False), stacked=False)
    for name, hf_shape in spec.layer_tensors().items():
        kernel = len(hf_shape) == 2  # stored [L, in, out]: element (l, j, i) is HF's [i, j] of layer l
        shape = (L, *(hf_shape[::-1] if kernel else hf_shape))
        keys = np.array([random_values.tensor_keys(seed, f"model.layers.{i}.{name}") for i in range(L)], np.uint32)
        out[name] = _draw(name, shape, dtype, keys, layout.weight(shape, stacked=True), stacked=True)
    return out


def _draw(name: str, shape: tuple[int, ...], dtype, keys: np.ndarray, sharding, stacked: bool) -> jax.Array:
    """Hash every element's HF index on the devices (jit with the target sharding: each device
    computes its own shards only). ``keys`` is uint32 [layers, 2] (one row when not stacked)."""
    dtype = jnp.dtype(dtype)
    if random_values.is_norm(name):
        return jax.jit(lambda: jnp.ones(shape, dtype), out_shardings=sharding)()
    hf_shape = (shape[2], shape[1]) if stacked and len(shape) == 3 else (shape[1:] if stacked else shape)
    random_values.check_size(name, hf_shape)

    def compute(keys):
        iota = functools.partial(jax.lax.broadcasted_iota, jnp.uint32, shape)
        if stacked and len(shape) == 3:  # [L, in, out]: HF index out * in_features + in
            index = iota(2) * jnp.uint32(shape[1]) + iota(1)
        elif stacked:  # [L, n]
            index = iota(1)
        elif len(shape) == 2:
            index = iota(0) * jnp.uint32(shape[1]) + iota(1)
        else:
            index = iota(0)
        per_layer = (-1,) + (1,) * (len(shape) - 1)
        k0, k1 = (keys[:, i].reshape(per_layer) if stacked else keys[0, i] for i in (0, 1))
        b = random_values.bits(index, k0, k1, wide=False)
        values = (b.astype(jnp.int32) - random_values.HALF).astype(jnp.float32) * jnp.float32(random_values.STEP)
        return values.astype(dtype)

    return jax.jit(compute, out_shardings=sharding)(jnp.asarray(keys))

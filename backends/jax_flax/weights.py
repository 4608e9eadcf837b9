"""Base weights for the JAX model: read from a HF safetensors directory, or drawn on the device.

Safetensors files are memory-mapped and parsed here with numpy (+ ml_dtypes for bf16, which
safetensors' own numpy loader cannot return), so no framework is involved and each tensor is
copied once: transposed from HF's [out, in] to [in, out], cast to the compute dtype and stacked
over layers on the host, then put on the device.
"""
from __future__ import annotations

import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from loraswitch.core.errors import UserError
from loraswitch.core.model_dir import read_safetensors_header, weight_files

from .spec import LINEAR_PARENT, LlamaSpec

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
INIT_STD = 0.02  # as core.random_model and HF's initializer_range


class SafetensorsFiles:
    """Name -> memory-mapped numpy array over some .safetensors files; ``path`` names them in errors."""

    def __init__(self, files: list[Path], path: Path):
        self.path = path
        self.entries: dict[str, tuple[Path, int, dict]] = {}
        for file in files:
            header = read_safetensors_header(file)
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
            raise UserError(f"{file}: tensor {name!r} has shape {list(info['shape'])} but config.json implies {list(shape)}")
        if info["dtype"] not in _DTYPES:
            raise UserError(f"{file}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        return np.memmap(file, dtype=dtype, mode="r", offset=data_start + start, shape=tuple(shape))


def load_weights(path: Path, spec: LlamaSpec, dtype) -> dict[str, jax.Array]:
    """The arrays ``model.Llama`` takes, read from the HF names of ``path``."""
    files = SafetensorsFiles(weight_files(path), path)
    np_dtype = np.dtype(jnp.dtype(dtype))
    L, d, V = spec.num_layers, spec.hidden_size, spec.vocab_size
    out = {"embed_tokens": jax.device_put(files.get("model.embed_tokens.weight", (V, d)).astype(np_dtype)),
           "norm": jax.device_put(files.get("model.norm.weight", (d,)).astype(np_dtype))}
    if not spec.tie_word_embeddings:
        out["lm_head"] = jax.device_put(files.get("lm_head.weight", (V, d)).astype(np_dtype))
    for norm in ("input_layernorm", "post_attention_layernorm"):
        out[norm] = jax.device_put(np.stack([files.get(f"model.layers.{i}.{norm}.weight", (d,)).astype(np_dtype)
                                             for i in range(L)]))
    for name, (n_in, n_out) in spec.linear_dims().items():
        stacked = np.empty((L, n_in, n_out), np_dtype)
        for i in range(L):
            hf = files.get(f"model.layers.{i}.{LINEAR_PARENT[name]}.{name}.weight", (n_out, n_in))
            stacked[i] = hf.T.astype(np_dtype)
        out[name] = jax.device_put(stacked)
    return out


def random_weights(spec: LlamaSpec, dtype, seed: int) -> dict[str, jax.Array]:
    """N(0, 0.02) matrices and unit norms drawn directly on the device in the compute dtype, for
    shapes too large to be worth writing to disk (``ModelSource.random_init``)."""
    L, d, V = spec.num_layers, spec.hidden_size, spec.vocab_size
    shapes = {"embed_tokens": (V, d)}
    if not spec.tie_word_embeddings:
        shapes["lm_head"] = (V, d)
    shapes.update({name: (L, n_in, n_out) for name, (n_in, n_out) in spec.linear_dims().items()})
    root = jax.random.PRNGKey(seed)
    out = {}
    for i, (name, shape) in enumerate(shapes.items()):
        out[name] = _normal(jax.random.fold_in(root, i), shape, jnp.dtype(dtype))
    ones = jnp.ones((d,), dtype)
    out["norm"] = ones
    out["input_layernorm"] = out["post_attention_layernorm"] = jnp.ones((L, d), dtype)
    return out


def _normal(key, shape, dtype):
    # jit so the fp32 draw is fused into the cast: only the compute-dtype array is materialised.
    return jax.jit(lambda k: (jax.random.normal(k, shape, jnp.float32) * INIT_STD).astype(dtype))(key)

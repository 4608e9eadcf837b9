"""The initial LoRA weights, drawn by the core so that every backend starts from the same adapter.

peft initialises ``lora_A.weight`` [r, in] with ``kaiming_uniform_(a=sqrt(5))``, which is
uniform(-1/sqrt(in), 1/sqrt(in)) (gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / in)), and
``lora_B.weight`` with zeros, so the adapted model starts equal to the base model. We draw A from
that distribution with numpy instead of a framework's generator: each module from its own
generator, seeded by (seed, module path), so the numbers do not depend on the framework, the
device, the order modules are created in, or which other modules are adapted. Backends copy
these fp32 arrays into their LoRA weights, in PEFT's [r, in] / [out, r] layout.
"""

from __future__ import annotations

import hashlib

import numpy as np

from loraswitch.core.adapters.peft_format import tensor_name


def module_generator(seed: int, module_path: str) -> np.random.Generator:
    """numpy's PCG64, seeded by the run seed and the sha256 of the module path (a stable name
    hash: Python's ``hash`` differs between processes)."""
    digest = np.frombuffer(hashlib.sha256(module_path.encode("utf-8")).digest(), dtype="<u4")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), *(int(w) for w in digest)])))


def lora_a(seed: int, module_path: str, r: int, in_features: int) -> np.ndarray:
    """lora_A.weight [r, in] of ``module_path``: uniform(-1/sqrt(in), 1/sqrt(in)), fp32."""
    bound = 1.0 / np.sqrt(in_features)
    return module_generator(seed, module_path).uniform(-bound, bound, size=(r, in_features)).astype(np.float32)


def initial_adapter(seed: int, modules: dict[str, tuple[int, int]], r: int) -> dict[str, np.ndarray]:
    """The whole initial adapter by PEFT tensor name: ``modules`` maps each adapted module path
    to its (in, out) features; A from ``lora_a``, B zero."""
    out = {}
    for path, (n_in, n_out) in modules.items():
        out[tensor_name(path, "A")] = lora_a(seed, path, r, n_in)
        out[tensor_name(path, "B")] = np.zeros((n_out, r), np.float32)
    return out

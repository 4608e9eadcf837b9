"""Measure how closely the torch and jax backends agree (README, "Same numbers on every backend").

    .venv/bin/python tools/same_numbers.py            # CPU, fp32, random:tiny, seed 0, 20 steps

Nothing is injected: each backend draws its initial adapter from the seed (the core's init) and
its dropout masks from the core's hash. Prints, for lora_dropout 0 and 0.1, the largest
relative difference between the two backends' per-step losses over 20 steps, then the same
for a run checkpointed at step 10 and resumed on the other backend, against the uninterrupted
run of the first. tests/backends/test_parity.py asserts the same within 1e-5.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

from loraswitch.core.config import Config
from loraswitch.core.data.batching import collate, epoch_order
from loraswitch.core.models.random_model import write_random_model
from loraswitch.core.training.schedule import plan_epoch
from loraswitch.core.types import MicroStep, ModelSource, TokenizedExample

N_STEPS, RESUME_AT = 20, 10


def windows(config: Config) -> list[list[MicroStep]]:
    """The engine's windows over 9 examples (batch 2, accumulation 2: windows of 2, 2, 1)."""
    rng = np.random.default_rng(5)
    examples = []
    for _ in range(9):
        n = int(rng.integers(6, 25))
        examples.append(TokenizedExample(rng.integers(0, 512, n).astype(np.int32), np.arange(n) >= rng.integers(1, 4)))
    out: list[list[MicroStep]] = []
    epoch = 0
    while len(out) < N_STEPS:
        order = epoch_order(len(examples), config.seed, epoch)
        for window in plan_epoch(len(examples), config.batch_size, config.accumulation_steps):
            batches = [collate([examples[order[i]] for i in r], config.batch_size, 0, 24) for r in window]
            weight = 1.0 / sum(b.n_targets for b in batches)
            lr = 5e-3 * (1 - len(out) / N_STEPS)
            out.append(
                [
                    MicroStep(b, weight, j == len(batches) - 1, lr, len(out), j, len(batches))
                    for j, b in enumerate(batches)
                ]
            )
        epoch += 1
    return out[:N_STEPS]


def make(name: str, model: Path, config: Config):
    if name == "torch":
        from loraswitch.backends.torch_peft.backend import TorchBackend

        backend = TorchBackend(device="cpu")
    else:
        from loraswitch.backends.jax_flax.backend import JaxBackend

        backend = JaxBackend()
    backend.load(ModelSource(name="random:tiny", path=model), config)
    return backend


def losses(backend, steps) -> list[float]:
    return [sum(float(backend.micro_step(m)) for m in window) for window in steps]


def rel(a: list[float], b: list[float]) -> float:
    return float(np.max(np.abs(np.array(a) - np.array(b)) / np.abs(np.array(b))))


def main() -> int:
    import torch

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    model = write_random_model(root / "tiny", "tiny", seed=0)
    for dropout in (0.0, 0.1):
        config = Config(
            lora_r=4, lora_alpha=8, lora_dropout=dropout, precision="fp32", seed=0, batch_size=2, accumulation_steps=2
        )
        steps = windows(config)
        run = {}
        for name in ("torch", "jax"):
            backend = make(name, model, config)
            run[name] = losses(backend, steps[:RESUME_AT])
            backend.save_adapter(root / f"{name}-{dropout}")
            backend.save_state(root / f"{name}-{dropout}")
            run[name] += losses(backend, steps[RESUME_AT:])
        print(
            f"lora_dropout {dropout}: torch vs jax, {N_STEPS} steps: max relative loss difference {rel(run['jax'], run['torch']):.2e}"
        )
        for first, then in (("torch", "jax"), ("jax", "torch")):
            resumed = make(then, model, config)
            resumed.load_adapter(root / f"{first}-{dropout}")
            resumed.load_state(root / f"{first}-{dropout}")
            tail = losses(resumed, steps[RESUME_AT:])
            final = abs(tail[-1] - run[first][-1]) / abs(run[first][-1])
            print(
                f"  {first} run resumed on {then} at step {RESUME_AT}: steps {RESUME_AT + 1}-{N_STEPS} within "
                f"{rel(tail, run[first][RESUME_AT:]):.2e}, final loss {tail[-1]:.7f} vs {run[first][-1]:.7f} ({final:.2e})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

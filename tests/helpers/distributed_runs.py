"""What test_distributed_torch.py and test_distributed_jax.py share: the run they train several
ways (a tiny random Llama in fp32 with dropout 0.1, 4 steps of 2 micro-batches of 4 rows) and the
checks that a multi-device run ended exactly where the single-device one did. The portable
dropout masks are keyed by each element's index in the global micro-batch, so they do not depend
on how many devices or processes share the rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from safetensors.numpy import load_file

from loraswitch.core.models.random_model import write_random_model

N_STEPS = 4
RTOL = 1e-5


def write_setup(root: Path, backend: str, **extra) -> Path:
    """Model, data and a config file in ``root``; 40 examples of uneven length, so windows mix padding."""
    model = write_random_model(root / "tiny", "tiny", seed=0)
    rng = np.random.default_rng(0)
    with open(root / "train.jsonl", "w") as f:
        for _ in range(40):
            a, b = (int(x) for x in rng.integers(0, 50, 2))
            f.write(json.dumps({"prompt": f"{a}+{b}=" * int(rng.integers(1, 4)), "completion": str(a + b)}) + "\n")
    values = dict(
        backend=backend,
        model=str(model),
        data=str(root / "train.jsonl"),
        batch_size=4,
        accumulation_steps=2,
        n_steps=N_STEPS,
        eval_every=2,
        save_every=2,
        eval_batches=2,
        learning_rate_multiplier=1e-3,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.1,
        precision="fp32",
        **extra,
        seed=0,
    )
    (root / "config.yaml").write_text(yaml.safe_dump(values))
    return root


def losses(run_dir: Path) -> list[tuple[str, int, float]]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["event"] in ("step", "eval"):
            out.append((r["event"], r["step"], r["loss"] if r["event"] == "step" else r["eval_loss"]))
    return out


def assert_same_losses(ours, reference):
    assert [(e, s) for e, s, _ in ours] == [(e, s) for e, s, _ in reference]
    np.testing.assert_allclose([x for *_, x in ours], [x for *_, x in reference], rtol=RTOL, atol=0)


def assert_same_adapter(ours: Path, reference: Path):
    a, b = load_file(str(ours / "adapter_model.safetensors")), load_file(str(reference / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b)
    for key in b:
        error = np.linalg.norm(a[key] - b[key]) / max(np.linalg.norm(b[key]), 1e-12)
        assert error < RTOL, f"{key}: relative error {error:.2e}"

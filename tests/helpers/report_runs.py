"""Real run directories for the report tests: short numpy-backend runs, one of them with a
samples.json like the quickstart writes, and strings in their config and samples that would be
markup if the report did not escape them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from loraswitch.core.config import resolve
from loraswitch.core.plugins import reset_plugin_manager
from loraswitch.core.training.engine import train

# Each would run script, load something or change the page if it reached the HTML unescaped.
HOSTILE = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>$\\alpha$ & </td>'


def write_data(path: Path, n: int = 30) -> Path:
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = (int(x) for x in rng.integers(0, 10, 2))
            f.write(json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) + "\n")
    return path


def train_numpy_runs(root: Path, cache: Path, names=("run-a", "run-<b>$x$")) -> list[Path]:
    """Short numpy runs differing in lora_r and learning rate (the second named with markup and
    mathtext); the first gets a samples.json."""
    root.mkdir(parents=True, exist_ok=True)
    data = write_data(root / f"data{HOSTILE[:8]}.jsonl")  # a data path holding markup
    runs = []
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("LORASWITCH_")]:
            mp.delenv(key)
        mp.setenv("LORASWITCH_CACHE", str(cache))
        reset_plugin_manager()
        for i, name in enumerate(names):
            values = dict(
                backend="numpy",
                model="random:tiny",
                data=str(data),
                output_dir=str(root / name),
                batch_size=2,
                accumulation_steps=2,
                n_steps=8,
                eval_every=4,
                save_every=8,
                learning_rate_multiplier=0.02 / (i + 1),
                lora_r=4 * (i + 1),
            )
            train(resolve(None, values, environ={}), quiet=True)
            runs.append(root / name)
        reset_plugin_manager()
    (runs[0] / "samples.json").write_text(
        json.dumps(
            {
                "heldout": "heldout.jsonl",
                "max_new_tokens": 8,
                "exact_match_before": 0.0,
                "exact_match_after": 0.5,
                "before": [{"prompt": f"1+1= {HOSTILE}", "answer": "7 <b>bold</b>", "reference": "2"}],
                "after": [{"prompt": f"1+1= {HOSTILE}", "answer": "2", "reference": "2"}],
            }
        )
    )
    return runs

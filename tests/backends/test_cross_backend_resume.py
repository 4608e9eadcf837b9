"""`loraswitch train --resume RUN --backend jax` after a torch run: the engine end to end.

A torch run stops at step 3 (its checkpoint: the PEFT adapter and the core's portable AdamW
state); resumed on the jax backend it continues to step 6 along the trajectory of a torch run
that never stopped (fp32, dropout 0.1 with the portable masks, per-step losses within 1e-5).
Both directions at the backend level, and over 20 steps: test_parity.py.

Run: .venv/bin/pytest tests/backends/test_cross_backend_resume.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers.run_metrics import metrics_lines  # noqa: E402

from loraswitch.core.config import resolve  # noqa: E402
from loraswitch.core.training.engine import resume_config, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_torch_run_resumes_on_jax(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    rng = np.random.default_rng(0)
    data.write_text(
        "".join(
            json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) + "\n"
            for a, b in rng.integers(0, 10, (24, 2))
        )
    )

    def config(name, **kw):
        values = dict(
            backend="torch",
            model="random:tiny",
            data=str(data),
            output_dir=str(tmp_path / name),
            batch_size=2,
            accumulation_steps=2,
            n_steps=6,
            eval_every=3,
            save_every=3,
            lora_r=4,
            lora_alpha=8,
            lora_dropout=0.1,
            learning_rate_multiplier=1e-2,
            precision="fp32",
            compile="false",
        )
        return resolve(None, {**values, **kw}, environ={})

    straight = train(config("straight"), quiet=True)
    train(config("switched", n_steps=3), quiet=True)
    capsys.readouterr()
    resumed = train(resume_config(tmp_path / "switched", {"n_steps": 6, "backend": "jax"}), resume=True)
    err = capsys.readouterr().err
    assert "step-000003 was written by backend torch; continuing on backend jax" in err

    assert (resumed["steps"], resumed["backend"], straight["backend"]) == (6, "jax", "torch")
    assert "backend: jax" in (tmp_path / "switched" / "config.yaml").read_text()
    ours, reference = metrics_lines(tmp_path / "switched"), metrics_lines(tmp_path / "straight")
    assert [(m["event"], m["step"]) for m in ours] == [(m["event"], m["step"]) for m in reference]
    for key in ("loss", "eval_loss"):
        got = [m[key] for m in ours if key in m]
        want = [m[key] for m in reference if key in m]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=0, err_msg=key)
    assert [m["lr"] for m in ours if "lr" in m] == [m["lr"] for m in reference if "lr" in m]

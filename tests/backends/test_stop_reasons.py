"""Every stop reason through the real engine on the torch and jax backends (the numpy backend's
are in test_engine.py and test_kill_anywhere.py).

A non-finite loss is provoked the way it happens for real, by one bad example: the embedding
row of the byte "Z" is NaN in the model, and exactly one training example contains a "Z", so the
loss turns NaN at the step that first sees it — after good steps whose checkpoints must survive.
"""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from loraswitch.core.config import resolve
from loraswitch.core.data.batching import epoch_order
from loraswitch.core.models.random_model import write_random_model
from loraswitch.core.training.engine import train

pytestmark = pytest.mark.usefixtures("isolated_env")
BACKENDS = ["torch", "jax"]
N_EXAMPLES = 8
POISON = ord("Z")  # byte tokenizer: the id of a byte is the byte


@pytest.fixture(scope="module")
def poisoned_model(tmp_path_factory):
    path = write_random_model(tmp_path_factory.mktemp("poisoned") / "tiny", "tiny", seed=0)
    weights = load_file(path / "model.safetensors")
    weights["model.embed_tokens.weight"][POISON] = np.nan
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


def _seed_with_poison_at(position: int) -> int:
    """A seed whose first-epoch order puts the last example (the poisoned one) at ``position``."""
    return next(s for s in range(1000) if list(epoch_order(N_EXAMPLES, s, 0)).index(N_EXAMPLES - 1) == position)


def _config(tmp_path, backend, model, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "train.jsonl"
    lines = [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(N_EXAMPLES - 1)]
    lines.append({"prompt": "Z+1=", "completion": "Z"})
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    values = dict(
        backend=backend,
        model=str(model),
        data=str(data),
        validation_data=str(data),
        output_dir=str(tmp_path / "run"),
        batch_size=1,
        accumulation_steps=1,
        n_steps=20,
        eval_every=100,
        save_every=1,
        learning_rate_multiplier=1e-3,
        lora_r=4,
        lora_dropout=0.0,
        eval_batches=1,
        precision="fp32",
    )
    values.update(kw)
    return resolve(None, values, environ={})


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, backend, poisoned_model):
    config = _config(tmp_path, backend, poisoned_model, seed=_seed_with_poison_at(2))
    summary = train(config, quiet=True)
    assert summary["stop_reason"] == "non_finite_loss"
    assert summary["non_finite_step"] == 3 and summary["steps"] == 2 and summary["adapter_step"] == 2
    run = tmp_path / "run"
    kept = load_file(run / "checkpoints" / "step-000002" / "adapter" / "adapter_model.safetensors")
    final = load_file(run / "adapter" / "adapter_model.safetensors")
    assert kept.keys() == final.keys()
    for key in kept:
        assert np.isfinite(final[key]).all() and np.array_equal(kept[key], final[key])
    assert not (run / "checkpoints" / "step-000003").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_n_steps_n_epochs_and_stop_eval_loss(tmp_path, backend):
    model = write_random_model(tmp_path / "tiny", "tiny", seed=0)
    clean = dict(validation_data=None, training_split=0.75)
    by_steps = train(_config(tmp_path / "a", backend, model, n_steps=3, **clean), quiet=True)
    assert (by_steps["stop_reason"], by_steps["steps"]) == ("n_steps", 3)
    by_epochs = train(_config(tmp_path / "b", backend, model, n_epochs=1, **clean), quiet=True)
    assert (by_epochs["stop_reason"], by_epochs["steps"]) == ("n_epochs", 6)  # 6 training examples, batch 1
    by_eval = train(_config(tmp_path / "c", backend, model, eval_every=2, stop_eval_loss=100.0, **clean), quiet=True)
    assert (by_eval["stop_reason"], by_eval["steps"]) == ("stop_eval_loss", 2)

"""The jax backend on its own, on CPU: plugin registration, architecture details, accumulation,
resume, adapters, generation and errors. Torch parity lives in test_parity.py.

Every distinct (model, LoRA settings, batch shape) is one XLA compile of a few seconds on 2 CPU
cores, so the tests share one tiny model, one config and one batch shape wherever they can.

Run: .venv/bin/pytest tests/backends/jax/test_backend.py -q
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

import jax
import jax.numpy as jnp
from helpers.adapters import write_random_adapter

from loraswitch.backends.jax_flax.backend import JaxBackend
from loraswitch.backends.jax_flax.model import chunked_cross_entropy_sum
from loraswitch.backends.jax_flax.rope import inv_frequencies
from loraswitch.backends.jax_flax.trees import named_leaves
from loraswitch.core.config import Config
from loraswitch.core.data.batching import collate
from loraswitch.core.errors import UserError
from loraswitch.core.models.families import RopeSpec, spec_from_config
from loraswitch.core.models.random_model import write_random_model
from loraswitch.core.models.shapes import shape_config
from loraswitch.core.types import (
    Batch,
    MicroStep,
    ModelSource,
    TokenizedExample,
)

RANK, ALPHA, T = 4, 8.0, 32  # T = 32: the padded length of the engine test's batches too


def make_config(**overrides) -> Config:
    values = dict(lora_r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, precision="fp32", seed=0)
    values.update(overrides)
    return Config(**values)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("tiny"), "tiny", seed=0)


def load(
    model_dir: Path, config: Config | None = None, *, train: bool = True, adapter: Path | None = None
) -> JaxBackend:
    backend = JaxBackend()
    backend.load(ModelSource(name="tiny", path=model_dir), config or make_config(), train=train)
    if adapter is not None:
        backend.load_adapter(adapter)
    return backend


@pytest.fixture(scope="module")
def nonzero_adapter(tiny_dir, tmp_path_factory) -> Path:
    """Random A and B (a fresh LoRA has B = 0, which hides the LoRA path and its dropout)."""
    return write_random_adapter(tmp_path_factory.mktemp("adapter"), tiny_dir, r=RANK, alpha=ALPHA, seed=0)


def load_spec(model_dir: Path):
    return spec_from_config(json.loads((model_dir / "config.json").read_text()), model_dir / "config.json")


def batch(seed: int, rows: int = 2) -> Batch:
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(rows):
        n = int(rng.integers(6, T + 1))
        examples.append(TokenizedExample(rng.integers(0, 512, n).astype(np.int32), np.arange(n) >= 2))
    return collate(examples, rows, 0, pad_to_multiple=T)


def lora_arrays(backend: JaxBackend) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in named_leaves(backend.lora).items()}


def run_window(backend: JaxBackend, batches: list[Batch], step: int, lr: float = 1e-2) -> float:
    weight = 1.0 / sum(b.n_targets for b in batches)
    return sum(
        float(backend.micro_step(MicroStep(b, weight, j == len(batches) - 1, lr, step, j, len(batches))))
        for j, b in enumerate(batches)
    )


# ---------------------------------------------------------------- plugin and architecture


def test_plugin_registers_without_importing_jax():
    code = (
        "import sys\n"
        "import loraswitch.backends.jax_flax as plugin\n"
        "seen = {}\n"
        "plugin.register_backends(lambda name, factory, **kw: seen.update({name: kw}))\n"
        "assert seen['jax']['requires'] == ('jax', 'flax', 'optax') and seen['jax']['extra'] == 'jax', seen\n"
        "heavy = [m for m in ('jax', 'flax', 'optax') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_llama3_rope_matches_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    hf = transformers.LlamaConfig(hidden_size=2048, num_attention_heads=32, rope_parameters=params)
    reference, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    ours = inv_frequencies(
        RopeSpec(
            theta=500000.0,
            kind="llama3",
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
        64,
    )
    np.testing.assert_allclose(ours, reference.numpy(), rtol=1e-6)
    plain = inv_frequencies(RopeSpec(theta=500000.0), 64)
    assert not np.allclose(plain, ours)  # the scaling did something at this shape


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "unsupported architecture"),
        ({"attention_bias": True}, "attention_bias"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
        ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
    ],
)
def test_unsupported_configs_are_named(change, message):
    config = {**shape_config("tiny"), **change}
    with pytest.raises(UserError, match=message) as info:
        spec_from_config(config, Path("model/config.json"))
    assert str(info.value).startswith("model/config.json:")


def test_unknown_target_module_is_a_user_error(tiny_dir):
    with pytest.raises(UserError, match="lora_target_modules: .*qkv_proj"):
        load(tiny_dir, make_config(lora_target_modules=["q_proj", "qkv_proj"]))


def test_chunked_cross_entropy_matches_plain_autodiff():
    """The hand-written gradient (computed chunk by chunk in the forward pass) equals autodiff
    of the textbook loss, for any chunk size, including one that needs padding."""
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(2, 7, 8)), jnp.float32)
    embedding = jnp.asarray(rng.normal(size=(11, 8)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, (2, 7)), jnp.int32).at[0, :3].set(-100)

    def textbook(h):
        log_probs = jax.nn.log_softmax(h @ embedding.T, axis=-1)
        picked = jnp.take_along_axis(log_probs, jnp.maximum(targets, 0)[..., None], -1)[..., 0]
        return -jnp.sum(jnp.where(targets != -100, picked, 0.0))

    expected_loss, expected_grad = jax.value_and_grad(textbook)(hidden)
    loss_and_grad = jax.jit(jax.value_and_grad(chunked_cross_entropy_sum), static_argnums=3)
    for chunk in (1000, 4):  # one chunk; 14 tokens padded to 16 in 4 chunks
        loss, grad = loss_and_grad(hidden, embedding, targets, chunk)
        np.testing.assert_allclose(float(loss), float(expected_loss), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), rtol=1e-5, atol=1e-6)
    # Without differentiation the primal (loss only) runs, and agrees.
    assert float(jax.jit(chunked_cross_entropy_sum, static_argnums=3)(hidden, embedding, targets, 4)) == pytest.approx(
        float(expected_loss), rel=1e-5
    )


# ---------------------------------------------------------------- training


def test_accumulation_window_equals_one_big_batch(tiny_dir, nonzero_adapter):
    """Two micro-batches in one window (weights 1/targets of the window) update exactly as one
    micro-batch holding all their rows: MultiSteps sums, the core's weights normalise."""
    b1, b2 = batch(1), batch(2)
    together = Batch(
        *(np.concatenate([getattr(b1, f), getattr(b2, f)]) for f in ("input_ids", "attention_mask", "labels"))
    )
    split, whole = load(tiny_dir, adapter=nonzero_adapter), load(tiny_dir, adapter=nonzero_adapter)
    before = lora_arrays(split)
    loss_split = run_window(split, [b1, b2], step=0)
    loss_whole = run_window(whole, [together], step=0)  # a window of one micro-batch (window_size 1)
    assert loss_split == pytest.approx(loss_whole, rel=1e-5)
    # Adam's moments hold the accumulated gradient itself (mu = 0.1 g, nu = 0.001 g^2 after one
    # update); the weights are compared norm-wise, since Adam's g / (|g| + eps) turns rounding
    # noise in a near-zero gradient element into a visible difference of that element.
    moments = {k: v for k, v in named_leaves(split.opt_state).items() if "/mu/" in k or "/nu/" in k}
    assert len(moments) == 2 * len(before)
    whole_state = named_leaves(whole.opt_state)
    for name, value in moments.items():
        reference = np.asarray(whole_state[name])
        np.testing.assert_allclose(np.asarray(value), reference, rtol=0, atol=1e-5 * np.abs(reference).max())
    after_split, after_whole = lora_arrays(split), lora_arrays(whole)
    for name in before:
        assert not np.allclose(after_split[name], before[name])  # an update happened
        assert np.linalg.norm(after_split[name] - after_whole[name]) < 1e-4 * np.linalg.norm(after_whole[name])
    # A short window (size 1) updates at once; mid-window nothing moves.
    run_window(split, [b1], step=1)
    after_short = lora_arrays(split)
    assert not np.array_equal(
        after_short["layers/self_attn/q_proj/lora_b"], after_split["layers/self_attn/q_proj/lora_b"]
    )
    weight = 1.0 / (b1.n_targets + b2.n_targets)
    split.micro_step(MicroStep(b1, weight, False, 1e-2, 2, 0, 2))
    assert all(np.array_equal(after_short[k], v) for k, v in lora_arrays(split).items())
    split.micro_step(MicroStep(b2, weight, True, 1e-2, 2, 1, 2))
    assert all(not np.array_equal(after_short[k], v) for k, v in lora_arrays(split).items())
    with pytest.raises(RuntimeError, match="accumulation out of step"):
        split.micro_step(MicroStep(b1, weight, False, 1e-2, 3, 1, 2))


def test_resume_replays_dropout_exactly(tiny_dir, nonzero_adapter, tmp_path):
    """Dropout keys come from (seed, step, micro): a run resumed from a checkpoint takes exactly
    the steps the uninterrupted run took."""
    config = make_config(lora_dropout=0.2, max_grad_norm=1.0)
    windows = [[batch(10), batch(11)], [batch(12), batch(13)], [batch(14), batch(15)]]
    first = load(tiny_dir, config, adapter=nonzero_adapter)
    eval_loss = first.eval_loss(windows[0][0])[0]
    weight = 1.0 / sum(b.n_targets for b in windows[0])
    dropped = float(first.micro_step(MicroStep(windows[0][0], weight, False, 1e-2, 0, 0, 2)))
    assert dropped != pytest.approx(eval_loss * weight, rel=1e-6)  # dropout is active in training
    first.micro_step(MicroStep(windows[0][1], weight, True, 1e-2, 0, 1, 2))
    first.save_adapter(tmp_path / "adapter")
    first.save_state(tmp_path / "state")
    saved = {k: np.asarray(v) for k, v in named_leaves(first.opt_state).items()}
    losses = [run_window(first, w, step) for step, w in enumerate(windows[1:], start=1)]

    resumed = load(tiny_dir, config)
    resumed.load_adapter(tmp_path / "adapter")
    resumed.load_state(tmp_path / "state")
    # The portable state (moments by PEFT name, one count) rebuilds optax's whole state exactly;
    # only the learning rate differs, which every micro-step sets anew.
    restored = {k: np.asarray(v) for k, v in named_leaves(resumed.opt_state).items()}
    assert restored.keys() == saved.keys()
    for name, value in saved.items():
        if not name.endswith("learning_rate"):
            np.testing.assert_array_equal(restored[name], value, err_msg=name)
    assert [run_window(resumed, w, step) for step, w in enumerate(windows[1:], start=1)] == losses
    for name, value in lora_arrays(first).items():
        np.testing.assert_array_equal(lora_arrays(resumed)[name], value)
    meta = json.loads((tmp_path / "state" / "optimizer.json").read_text())
    assert meta["step"] == 1 and meta["backend"] == "jax" and meta["format"] == "loraswitch-adamw/1"


def test_random_init_source_trains(tiny_dir, tmp_path):
    """random_init: the backend draws the weights itself (the llama-1b/8b benchmark path)."""
    config_only = tmp_path / "model"  # what a random:<shape> source holds when its weights are not written
    shutil.copytree(tiny_dir, config_only, ignore=shutil.ignore_patterns("*.safetensors"))
    backend = JaxBackend()
    backend.load(ModelSource(name="random:tiny", path=config_only, random_init=True, init_seed=3), make_config())
    loss = run_window(backend, [batch(1)], step=0)
    assert np.isfinite(loss) and loss == pytest.approx(np.log(512), rel=0.1)  # near-uniform predictions
    facts = backend.describe()
    spec = load_spec(tiny_dir)
    lora = spec.num_layers * RANK * sum(i + o for i, o in spec.linear_dims().values())
    assert facts["params_trainable"] == lora
    assert facts["params_total"] == spec.n_params() + lora
    assert facts["precision"] == "fp32" and facts["attention"] == "xla" and facts["backend"] == "jax"


def test_bf16_loss_is_close_to_fp32(tiny_dir, nonzero_adapter):
    b = batch(4)
    fp32 = load(tiny_dir, train=False, adapter=nonzero_adapter).eval_loss(b)
    bf16 = load(tiny_dir, make_config(precision="bf16"), train=False, adapter=nonzero_adapter).eval_loss(b)
    assert bf16[1] == fp32[1] == b.n_targets
    assert bf16[0] == pytest.approx(fp32[0], rel=2e-2)
    assert bf16[0] != fp32[0]


def test_full_remat_gives_the_same_gradients(tiny_dir, nonzero_adapter, monkeypatch):
    from flax import nnx

    b = batch(5)

    def grads(backend):
        def loss(lora):
            model = nnx.merge(backend.graphdef, lora, backend.frozen)
            return model.loss_sum(b.input_ids, b.attention_mask, b.labels)

        return named_leaves(jax.jit(jax.grad(loss))(backend.lora))

    plain = grads(load(tiny_dir, train=False, adapter=nonzero_adapter))
    monkeypatch.setenv("LORASWITCH_JAX_REMAT", "full")
    remat_backend = load(tiny_dir, train=False, adapter=nonzero_adapter)
    assert remat_backend.describe()["remat"] == "full"
    for name, value in grads(remat_backend).items():
        reference = np.asarray(plain[name])
        np.testing.assert_allclose(np.asarray(value), reference, rtol=0, atol=1e-5 * np.abs(reference).max())
    monkeypatch.setenv("LORASWITCH_JAX_REMAT", "sometimes")
    with pytest.raises(UserError, match="LORASWITCH_JAX_REMAT"):
        load(tiny_dir, train=False)


# ---------------------------------------------------------------- inference


def test_eval_loss_matches_logits(tiny_dir, nonzero_adapter):
    backend = load(tiny_dir, train=False, adapter=nonzero_adapter)
    b = batch(6)
    loss_sum, n = backend.eval_loss(b)
    logits = backend.logits(b).astype(np.float64)
    lse = np.log(np.exp(logits).sum(-1))
    labels = b.labels[:, 1:]  # HF convention: position i predicts labels[i + 1]
    picked = np.take_along_axis(logits[:, :-1], np.maximum(labels, 0)[..., None], -1)[..., 0]
    expected = np.where(labels != -100, lse[:, :-1] - picked, 0).sum()
    assert n == b.n_targets
    assert loss_sum == pytest.approx(expected, rel=1e-5)


def test_generate_with_cache_matches_full_forward(tiny_dir, nonzero_adapter):
    backend = load(tiny_dir, train=False, adapter=nonzero_adapter)
    prompt = [5, 17, 300, 42, 7]
    new = backend.generate(prompt, max_new_tokens=T - len(prompt))
    assert len(new) == T - len(prompt)
    # Greedy with a KV cache = argmax of one full forward over prompt + continuation (teacher forcing).
    ids = np.array([prompt + new], np.int32)
    logits = backend.logits(Batch(ids, np.ones_like(ids), ids))
    assert list(logits[0, len(prompt) - 1 : -1].argmax(-1)) == new
    # generation stops before the first occurrence of a stop id (greedy output may repeat tokens)
    assert backend.generate(prompt, max_new_tokens=4, stop_ids=(new[2],)) == new[: new.index(new[2])]
    sampled = backend.generate(prompt, max_new_tokens=8, temperature=1.5, seed=1)
    assert sampled == backend.generate(prompt, max_new_tokens=8, temperature=1.5, seed=1)
    assert sampled != backend.generate(prompt, max_new_tokens=8, temperature=1.5, seed=2)
    # top_p so small that only the most likely token survives: sampling becomes greedy.
    assert backend.generate(prompt, max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=4) == new[:6]


# ---------------------------------------------------------------- files


def test_adapter_round_trip_in_peft_layout(tiny_dir, nonzero_adapter, tmp_path):
    backend = load(tiny_dir, train=False, adapter=nonzero_adapter)
    backend.save_adapter(tmp_path)
    from safetensors.numpy import load_file

    written, original = (
        load_file(str(tmp_path / "adapter_model.safetensors")),
        load_file(str(nonzero_adapter / "adapter_model.safetensors")),
    )
    assert sorted(written) == sorted(original)
    assert written["base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"].shape == (RANK, 64)
    assert written["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"].shape == (32, RANK)
    for key, value in original.items():
        np.testing.assert_array_equal(written[key], value)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == RANK and config["lora_alpha"] == 8 and config["use_rslora"] is False
    assert config["target_modules"] == sorted(config["target_modules"]) and len(config["target_modules"]) == 7


def test_saved_adapter_records_the_base_and_merges_to_the_same_logits(tiny_dir, nonzero_adapter, tmp_path):
    """A jax-written adapter carries the base fingerprint, and `loraswitch merge`'s result, run
    by transformers, computes the logits the jax backend computes with the adapter."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from loraswitch.core.export.adapter_source import read_lora_adapter
    from loraswitch.core.export.fingerprint import base_fingerprint, read_base_fingerprint
    from loraswitch.core.export.merge import merge_model

    backend = load(tiny_dir, train=False, adapter=nonzero_adapter)
    backend.save_adapter(tmp_path / "adapter")
    assert read_base_fingerprint(tmp_path / "adapter") == base_fingerprint(tiny_dir)
    merge_model(tiny_dir, read_lora_adapter(tmp_path / "adapter"), tmp_path / "merged")
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    b = batch(11, rows=1)
    n = int(b.attention_mask[0].sum())
    with torch.no_grad():
        theirs = merged(torch.from_numpy(b.input_ids[:, :n].astype(np.int64))).logits.numpy()
    assert np.abs(backend.logits(b)[:, :n] - theirs).max() < 1e-4


def test_adapter_mismatches_are_named(tiny_dir, nonzero_adapter, tmp_path):
    other = load(tiny_dir, make_config(lora_r=2), train=False)
    with pytest.raises(UserError, match=r"adapter_config.json: r = 4 but this run has lora_r = 2"):
        other.load_adapter(nonzero_adapter)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((nonzero_adapter / "adapter_config.json").read_text())
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(nonzero_adapter / "adapter_model.safetensors"))
    del tensors["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]
    save_file(tensors, str(broken / "adapter_model.safetensors"))
    with pytest.raises(
        UserError,
        match=r"adapter_model.safetensors: tensor 'base_model.model.model.layers.1.mlp.down_proj.lora_B.weight' is missing",
    ):
        load(tiny_dir, train=False).load_adapter(broken)


def test_state_mismatches_are_named(tiny_dir, tmp_path):
    load(tiny_dir).save_state(tmp_path / "r4")
    other = load(tiny_dir, make_config(lora_r=2))
    with pytest.raises(
        UserError,
        match=r"optimizer.json: 'base_model\S+lora_A.weight' has shape \[4, \d+\] in the checkpoint, "
        r"this model has \[2, \d+\] \(a different lora_r",
    ):
        other.load_state(tmp_path / "r4")
    (tmp_path / "old").mkdir()  # the jax backend's own format before the portable one
    (tmp_path / "old" / "jax_optimizer.json").write_text("{}")
    with pytest.raises(UserError, match=r"optimizer.json: missing; .*found jax_optimizer.json: written by an older"):
        other.load_state(tmp_path / "old")


# ---------------------------------------------------------------- through the engine


def test_engine_stop_reasons_and_resume(tmp_path, monkeypatch):
    """Through the real engine on random:tiny: n_steps, stop_eval_loss and n_epochs end the run
    with their reason, and a run interrupted at step 3 (SIGINT) and resumed writes the same
    metrics and the same adapter bytes as the uninterrupted run. The LoRA settings are those of
    test_resume_replays_dropout_exactly, so the compiled step is reused."""
    import os
    import signal

    from loraswitch.core import hookimpl
    from loraswitch.core.config import resolve
    from loraswitch.core.plugins import get_plugin_manager, reset_plugin_manager
    from loraswitch.core.training.engine import resume_config, train

    for key in [k for k in os.environ if k.startswith("LORASWITCH_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LORASWITCH_CACHE", str(tmp_path / "cache"))
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
            backend="jax",
            model="random:tiny",
            data=str(data),
            output_dir=str(tmp_path / name),
            batch_size=2,
            accumulation_steps=2,
            n_steps=6,
            eval_every=3,
            save_every=3,
            lora_r=RANK,
            lora_alpha=ALPHA,
            lora_dropout=0.2,
            max_grad_norm=1.0,
            learning_rate_multiplier=1e-2,
            precision="fp32",
        )
        return resolve(None, {**values, **kw}, environ={})

    def logged(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [
            {k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")}
            for r in rows
            if r["event"] in ("step", "eval")
        ]

    class InterruptAtStep3:
        @hookimpl
        def on_step_end(self, run, metrics):
            if metrics["step"] == 3:
                os.kill(os.getpid(), signal.SIGINT)

    reset_plugin_manager()
    try:
        full = train(config("full"), quiet=True)
        assert (full["stop_reason"], full["steps"]) == ("n_steps", 6)
        get_plugin_manager().register(InterruptAtStep3(), name="interrupter")
        part = train(config("part"), quiet=True)
        get_plugin_manager().unregister(name="interrupter")
        assert (part["stop_reason"], part["steps"]) == ("interrupted", 3)
        resumed = train(resume_config(tmp_path / "part"), resume=True, quiet=True)
        assert (resumed["stop_reason"], resumed["steps"]) == ("n_steps", 6)
        assert logged("part") == logged("full")
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            assert (tmp_path / "part" / "adapter" / name).read_bytes() == (
                tmp_path / "full" / "adapter" / name
            ).read_bytes()
        by_eval = train(config("eval", stop_eval_loss=100.0), quiet=True)
        assert (by_eval["stop_reason"], by_eval["steps"]) == ("stop_eval_loss", 3)  # the first eval (eval_every 3)
        epochs = train(config("epochs", n_epochs=1, n_steps=100), quiet=True)
        # 24 records -> 19 train -> 10 micro-batches of 2 -> 5 windows of 2
        assert (epochs["stop_reason"], epochs["n_train"], epochs["steps"]) == ("n_epochs", 19, 5)
    finally:
        reset_plugin_manager()

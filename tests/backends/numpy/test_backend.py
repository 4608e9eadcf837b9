"""The example numpy backend (examples/loraswitch-numpy): its gradients, optimizer, accumulation
and files must be right, because the engine's own tests trust it as a reference backend."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loraswitch.core.backend import Backend
from loraswitch.core.config import Config
from loraswitch.core.errors import UserError
from loraswitch.core.types import IGNORE_INDEX, Batch, MicroStep, ModelSource

numpy_backend = pytest.importorskip("loraswitch_numpy.backend", reason="pip install -e examples/loraswitch-numpy")
from loraswitch_numpy import model as M  # noqa: E402

VOCAB = 40


@pytest.fixture
def source(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"vocab_size": VOCAB, "hidden_size": 16}))
    return ModelSource(name="test-model", path=d, random_init=True, init_seed=7)


def make_config(**kw):
    values = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate_multiplier=1e-2, seed=3)
    values.update(kw)
    return Config(**values)


def make_backend(source, dtype=np.float32, **kw):
    b = numpy_backend.NumpyBackend(dtype=dtype)
    b.load(source, make_config(**kw))
    return b


def batch_from(rows, prompt_len=1):
    """Right-padded batch; the first ``prompt_len`` tokens of each row carry no loss."""
    t = max(len(r) for r in rows)
    ids = np.zeros((len(rows), t), np.int32)
    mask = np.zeros((len(rows), t), np.int32)
    labels = np.full((len(rows), t), IGNORE_INDEX, np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
        labels[i, prompt_len : len(r)] = r[prompt_len:]
    return Batch(ids, mask, labels)


def micro(batch, weight, *, apply=True, lr=1e-2, step=0, index=0, window=1):
    return MicroStep(batch=batch, weight=weight, apply_update=apply, lr=lr, step=step, micro=index, window_size=window)


def cycle_rows(n_rows=4, length=12):
    """A memorisable pattern: token i is followed by token (i + 3) % VOCAB."""
    return [[(s + 3 * k) % VOCAB for k in range(length)] for s in range(n_rows)]


def test_satisfies_the_backend_protocol(source):
    assert isinstance(make_backend(source), Backend)


def test_gradients_match_finite_differences(source):
    b = make_backend(source, dtype=np.float64)
    rng = np.random.default_rng(0)
    # B starts at zero (as in peft), which would hide errors in dA: give it values first.
    b.params["lora_B"][...] = rng.normal(0, 0.3, b.params["lora_B"].shape)
    batch = batch_from(cycle_rows(3, 7), prompt_len=2)
    ids, labels = M.targets(batch.input_ids, batch.labels)
    mask = M.dropout_mask((1, *ids.shape, b.dim), 0.3, 1, 0, 0, np.float64)[0]  # checks dropout's backward too
    assert 0.2 < float((mask == 0).mean()) < 0.4  # about 30% dropped
    weight = 0.37

    def loss(a, bb):
        return M.loss_and_grads(b.frozen, a, bb, b.scale, ids, labels, weight, mask)[0]

    _, grad_a, grad_b = M.loss_and_grads(
        b.frozen, b.params["lora_A"], b.params["lora_B"], b.scale, ids, labels, weight, mask
    )
    eps = 1e-6
    for name, grad in (("lora_A", grad_a), ("lora_B", grad_b)):
        numeric = np.zeros_like(grad)
        for idx in np.ndindex(grad.shape):
            plus = {k: v.copy() for k, v in b.params.items()}
            minus = {k: v.copy() for k, v in b.params.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            numeric[idx] = (loss(plus["lora_A"], plus["lora_B"]) - loss(minus["lora_A"], minus["lora_B"])) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8, err_msg=name)
        assert np.abs(grad).max() > 1e-3  # a zero gradient would pass trivially


def test_accumulation_window_equals_one_big_batch(source):
    """Two micro-batches weighted by 1/targets-in-window give the update of the whole window."""
    rows = cycle_rows(4, 9)
    first, second, whole = batch_from(rows[:2]), batch_from(rows[2:]), batch_from(rows)
    w = 1.0 / whole.n_targets
    split = make_backend(source)
    l1 = split.micro_step(micro(first, w, apply=False, window=2))
    l2 = split.micro_step(micro(second, w, apply=True, index=1, window=2))
    together = make_backend(source)
    whole_loss = together.micro_step(micro(whole, w))
    assert l1 + l2 == pytest.approx(whole_loss, rel=1e-5)
    assert whole_loss == pytest.approx(np.log(VOCAB), rel=0.5)  # a mean token loss, not a sum
    for k in ("lora_A", "lora_B"):
        np.testing.assert_allclose(split.params[k], together.params[k], rtol=1e-5, atol=1e-7)
    assert np.abs(together.params["lora_B"]).max() > 0  # the update happened
    assert all(not g.any() for g in split.grads.values())  # accumulator reset at the window end


def test_no_update_before_the_window_ends(source):
    b = make_backend(source)
    before = {k: v.copy() for k, v in b.params.items()}
    b.micro_step(micro(batch_from(cycle_rows(2)), 0.1, apply=False, window=2))
    for k in before:
        np.testing.assert_array_equal(b.params[k], before[k])
    assert np.abs(b.grads["lora_B"]).max() > 0


def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    from loraswitch_numpy.adamw import AdamW

    rng = np.random.default_rng(1)
    p = rng.normal(size=(3, 5))
    grads = [rng.normal(size=(3, 5)) for _ in range(4)]
    ours = {"w": p.copy()}
    opt = AdamW(ours, weight_decay=0.1)
    tp = torch.nn.Parameter(torch.tensor(p))
    topt = torch.optim.AdamW([tp], lr=0.0, weight_decay=0.1)
    for i, g in enumerate(grads):
        lr = 0.01 * (i + 1)
        opt.step(ours, {"w": g}, lr)
        topt.param_groups[0]["lr"] = lr
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(ours["w"], tp.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_grad_clipping_limits_the_norm():
    from loraswitch_numpy.adamw import clip_grad_norm

    grads = {"a": np.full((2, 2), 3.0), "b": np.full(3, 4.0)}
    before = clip_grad_norm(grads, 1.0)
    assert before == pytest.approx(np.sqrt(4 * 9 + 3 * 16))
    assert np.sqrt(sum((g**2).sum() for g in grads.values())) == pytest.approx(1.0, rel=1e-5)


def test_training_lowers_the_loss(source):
    b = make_backend(source, lora_dropout=0.05)
    batch = batch_from(cycle_rows(4, 16))
    start, n = b.eval_loss(batch)
    for step in range(40):
        b.micro_step(micro(batch, 1.0 / batch.n_targets, step=step, lr=3e-2))
    end, n_after = b.eval_loss(batch)
    assert n == n_after == batch.n_targets
    assert end / n < 0.5 * (start / n), (start / n, end / n)


def test_dropout_is_keyed_by_step_and_micro(source):
    batch = batch_from(cycle_rows(2))
    a, b, c = (make_backend(source, lora_dropout=0.5) for _ in range(3))
    for be in (a, b, c):
        be.params["lora_B"][...] = 0.5  # make the LoRA path (and thus dropout) affect the loss
    la = a.micro_step(micro(batch, 1.0, step=5, index=1))
    lb = b.micro_step(micro(batch, 1.0, step=5, index=1))
    lc = c.micro_step(micro(batch, 1.0, step=6, index=1))
    assert la == lb
    assert la != lc


def test_eval_and_logits_agree(source):
    b = make_backend(source)
    b.params["lora_B"][...] = 0.1
    batch = batch_from(cycle_rows(2, 6), prompt_len=3)
    logits = b.logits(batch)
    assert logits.shape == (2, 6, VOCAB) and logits.dtype == np.float32
    total, n = b.eval_loss(batch)
    lp = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    expect = -sum(
        lp[i, t - 1, batch.labels[i, t]] for i in range(2) for t in range(1, 6) if batch.labels[i, t] != IGNORE_INDEX
    )
    assert n == batch.n_targets == 6
    assert total == pytest.approx(expect, rel=1e-5)


def test_checkpoint_resume_is_bit_identical(source, tmp_path):
    """Adapter + optimizer state saved at step 3 and restored give the same adapter bytes at step 6."""
    batch = batch_from(cycle_rows(4))
    kw = dict(lora_dropout=0.1, weight_decay=0.01, max_grad_norm=1.0)

    def run(backend, steps):
        for s in steps:
            backend.micro_step(micro(batch, 0.5 / batch.n_targets, apply=False, step=s, window=2))
            backend.micro_step(micro(batch, 0.5 / batch.n_targets, step=s, index=1, window=2))

    straight = make_backend(source, **kw)
    run(straight, range(6))
    straight.save_adapter(tmp_path / "straight")

    first = make_backend(source, **kw)
    run(first, range(3))
    first.save_adapter(tmp_path / "ckpt")
    first.save_state(tmp_path / "ckpt")
    resumed = make_backend(source, **kw)
    resumed.load_adapter(tmp_path / "ckpt")
    resumed.load_state(tmp_path / "ckpt")
    assert resumed.optimizer.t == 3
    run(resumed, range(3, 6))
    resumed.save_adapter(tmp_path / "resumed")

    name = "adapter_model.safetensors"
    assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()
    assert (tmp_path / "straight" / name).read_bytes() != (tmp_path / "ckpt" / name).read_bytes()


def test_adapter_is_in_peft_layout(source, tmp_path):
    from safetensors.numpy import load_file

    b = make_backend(source)
    b.save_adapter(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    tensors = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert tensors["base_model.model.proj.lora_A.weight"].shape == (4, 16)  # [r, in]
    assert tensors["base_model.model.proj.lora_B.weight"].shape == (16, 4)  # [out, r]


def test_inference_load_adapter_takes_its_rank(source, tmp_path):
    trained = make_backend(source, lora_r=2, lora_alpha=4)
    trained.params["lora_B"][...] = 0.2
    trained.save_adapter(tmp_path / "a")
    viewer = numpy_backend.NumpyBackend()
    viewer.load(source, make_config(), train=False)  # lora_r 4 in the config
    viewer.load_adapter(tmp_path / "a")
    batch = batch_from(cycle_rows(1))
    np.testing.assert_array_equal(viewer.logits(batch), trained.logits(batch))


def test_bad_files_name_the_file(source, tmp_path):
    b = make_backend(source)
    b.save_adapter(tmp_path / "ck")
    b.save_state(tmp_path / "ck")
    other = make_backend(source, lora_r=8)
    with pytest.raises(UserError, match=r"optimizer.json: 'base_model.model.proj.lora_A.weight' has shape \[4, 16\]"):
        other.load_state(tmp_path / "ck")
    with pytest.raises(UserError, match="adapter_config.json: r = 4 but this run trains lora_r = 8"):
        other.load_adapter(tmp_path / "ck")
    (tmp_path / "ck" / "optimizer.json").write_text("{not json")
    with pytest.raises(UserError, match="optimizer.json: not valid JSON"):
        b.load_state(tmp_path / "ck")
    with pytest.raises(UserError, match="optimizer.json: missing"):
        b.load_state(tmp_path / "missing")


def test_nan_hook_poisons_the_chosen_step(source, monkeypatch):
    monkeypatch.setenv("LORASWITCH_NUMPY_NAN_AT_STEP", "2")
    b = make_backend(source)
    batch = batch_from(cycle_rows(2))
    assert np.isfinite(b.micro_step(micro(batch, 0.1, step=0)))
    assert np.isnan(b.micro_step(micro(batch, 0.1, step=1)))


def test_generate_greedy_sampling_and_stop(source):
    b = make_backend(source)
    greedy = b.generate([1, 2], max_new_tokens=8)
    assert len(greedy) == 8 and greedy == b.generate([1, 2], max_new_tokens=8)
    # bigram model: greedy decoding is a deterministic walk from the last token
    logits = b.logits(batch_from([[2]]))[0, 0]
    assert greedy[0] == int(np.argmax(logits))
    s1 = b.generate([1], max_new_tokens=20, temperature=1.0, seed=1)
    assert s1 == b.generate([1], max_new_tokens=20, temperature=1.0, seed=1)
    assert s1 != b.generate([1], max_new_tokens=20, temperature=1.0, seed=2)
    assert b.generate([1], max_new_tokens=20, temperature=1.0, top_p=1e-9, seed=5) == b.generate([1], max_new_tokens=20)
    stop = greedy[2]
    stopped = b.generate([1, 2], max_new_tokens=8, stop_ids=(stop,))
    assert stopped == greedy[: greedy.index(stop) + 1]


def test_token_outside_vocab_is_a_user_error(source):
    b = make_backend(source)
    with pytest.raises(UserError, match="token id 40 is outside the vocabulary"):
        b.eval_loss(batch_from([[1, 2, VOCAB]]))


def test_describe(source):
    d = make_backend(source).describe()
    assert d["framework"] == "numpy" and d["device"] == "cpu"
    assert d["params_trainable"] == 2 * 4 * 16
    assert d["params_total"] == d["params_trainable"] + 2 * VOCAB * 16 + 16 * 16


def test_rslora_scales_by_alpha_over_sqrt_r(source):
    """r = 4: alpha / sqrt(r) is twice alpha / r, so rsLoRA with B equals plain LoRA with 2 B."""
    batch = batch_from(cycle_rows(2))
    rs, plain = make_backend(source, use_rslora=True), make_backend(source)
    b = np.random.default_rng(0).normal(0, 0.5, rs.params["lora_B"].shape).astype(np.float32)
    rs.params["lora_B"][...] = b
    plain.params["lora_B"][...] = 2 * b
    assert rs.eval_loss(batch)[0] == pytest.approx(plain.eval_loss(batch)[0], rel=1e-6)
    plain.params["lora_B"][...] = b
    assert abs(rs.eval_loss(batch)[0] - plain.eval_loss(batch)[0]) > 1e-3 * abs(plain.eval_loss(batch)[0])

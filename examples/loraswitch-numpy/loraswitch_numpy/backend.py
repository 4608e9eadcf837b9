"""The ``numpy`` backend: satisfies ``loraswitch.core.api.Backend`` without inheriting from it.

Everything two backends must agree on comes from loraswitch's public API: the initial LoRA
weights, the portable dropout masks, the PEFT adapter files and the AdamW state files. What is
left here is the model's own arithmetic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from loraswitch.core.api import (
    AdamWState,
    AdapterConfig,
    UserError,
    expected_shapes,
    read_adapter_config,
    read_adapter_weights,
    read_optimizer_state,
    tensor_name,
    write_adapter,
    write_optimizer_state,
)

from .adamw import AdamW, clip_grad_norm
from .model import (
    MAX_DIM,
    MODULE,
    Frozen,
    cross_entropy,
    dropout_mask,
    forward,
    init_frozen,
    init_lora,
    loss_and_grads,
    targets,
)

KEY_A, KEY_B = tensor_name(MODULE, "A"), tensor_name(MODULE, "B")  # [r, in] and [out, r], PEFT's layout

NAN_ENV = "LORASWITCH_NUMPY_NAN_AT_STEP"  # testing aid, see README.md


class NumpyBackend:
    name = "numpy"

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)  # float64 only for gradient checks in tests
        self.frozen: Frozen | None = None
        self.params: dict[str, np.ndarray] = {}
        self.optimizer: AdamW | None = None
        self.grads: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ set-up

    def load(self, model, config, *, train: bool = True) -> None:
        """Build the frozen model from ``model.config`` (vocab_size, hidden_size) and
        ``model.init_seed``, then LoRA from ``config``. The safetensors weights are not read."""
        cfg = model.config
        for key in ("vocab_size", "hidden_size"):
            if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
                raise UserError(f"{model.path / 'config.json'}: {key!r} must be a positive integer")
        self.model_name = model.name
        self.vocab = cfg["vocab_size"]
        self.dim = min(cfg["hidden_size"], MAX_DIM)
        self.config = config
        self.frozen = init_frozen(self.vocab, self.dim, model.init_seed, self.dtype)
        self.r = config.lora_r
        self.alpha = config.lora_alpha
        self.use_rslora = config.use_rslora
        a, b = init_lora(self.dim, self.r, config.seed, self.dtype)
        self.params = {"lora_A": a, "lora_B": b}
        self.train = train
        if train:
            self.optimizer = AdamW(self.params, weight_decay=config.weight_decay)
            self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        nan_at = os.environ.get(NAN_ENV)
        self.nan_at_step = int(nan_at) if nan_at else None

    @property
    def scale(self) -> float:
        return self.alpha / (self.r**0.5 if self.use_rslora else self.r)

    # ------------------------------------------------------------------ training

    def micro_step(self, micro) -> float:
        """Accumulate ``micro.weight`` x the gradient of this micro-batch's loss sum; apply
        AdamW at ``micro.lr`` when the window ends."""
        self._optimizer("micro_step")
        batch = micro.batch
        self._check_ids(batch.input_ids)
        ids, labels = targets(batch.input_ids, batch.labels)
        mask = None
        if self.config.lora_dropout > 0 and len(ids):
            # One mask per (row, position, feature) of the whole micro-batch, as every backend
            # keys it; then the target positions are picked, so the mask of a token does not
            # depend on which other tokens are targets.
            full = dropout_mask(
                batch.input_ids.shape + (self.dim,),
                self.config.lora_dropout,
                self.config.seed,
                micro.step,
                micro.micro,
                self.dtype,
                self.config.dropout_masks,
            )
            mask = full[:, :-1][batch.labels[:, 1:] != -100]
        loss = 0.0
        if len(ids):
            loss, grad_a, grad_b = loss_and_grads(
                self.frozen, self.params["lora_A"], self.params["lora_B"], self.scale, ids, labels, micro.weight, mask
            )
            if self.nan_at_step is not None and micro.step + 1 == self.nan_at_step:
                loss, grad_a, grad_b = loss * np.nan, grad_a * np.nan, grad_b * np.nan
            self.grads["lora_A"] += grad_a
            self.grads["lora_B"] += grad_b
        if micro.apply_update:
            if self.config.max_grad_norm is not None:
                clip_grad_norm(self.grads, self.config.max_grad_norm)
            self.optimizer.step(self.params, self.grads, micro.lr)
            for g in self.grads.values():
                g.fill(0.0)
        return float(loss)

    # ------------------------------------------------------------------ inference

    def eval_loss(self, batch) -> tuple[float, int]:
        self._check_ids(batch.input_ids)
        ids, labels = targets(batch.input_ids, batch.labels)
        if not len(ids):
            return 0.0, 0
        logits, _ = forward(self.frozen, self.params["lora_A"], self.params["lora_B"], self.scale, ids)
        ce, _ = cross_entropy(logits.astype(np.float64), labels)
        return float(ce.sum()), int(len(ids))

    def logits(self, batch) -> np.ndarray:
        self._check_ids(batch.input_ids)
        logits, _ = forward(self.frozen, self.params["lora_A"], self.params["lora_B"], self.scale, batch.input_ids)
        return logits.astype(np.float32)

    def generate(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop_ids: tuple[int, ...] = (),
    ) -> list[int]:
        """Greedy when temperature is 0, else temperature + nucleus (top_p) sampling. A stop id
        ends generation and is returned, as Hugging Face ``generate`` returns its eos."""
        if not prompt_ids:
            raise UserError("generate: the prompt is empty")
        self._check_ids(np.asarray(prompt_ids))
        rng = np.random.default_rng(seed)
        last, out = int(prompt_ids[-1]), []
        for _ in range(max_new_tokens):
            logits, _ = forward(self.frozen, self.params["lora_A"], self.params["lora_B"], self.scale, np.array([last]))
            logits = logits[0].astype(np.float64)
            if temperature <= 0:
                last = int(np.argmax(logits))
            else:
                last = int(rng.choice(self.vocab, p=_nucleus(logits / temperature, top_p)))
            out.append(last)
            if last in stop_ids:
                break
        return out

    # ------------------------------------------------------------------ files

    def save_adapter(self, directory: Path) -> None:
        config = AdapterConfig(
            r=self.r,
            lora_alpha=float(self.alpha),
            use_rslora=self.use_rslora,
            target_modules=[MODULE],
            lora_dropout=self.config.lora_dropout,
            base_model_name_or_path=self.model_name,
        )
        write_adapter(Path(directory), config, {KEY_A: self.params["lora_A"], KEY_B: self.params["lora_B"]})

    def load_adapter(self, directory: Path) -> None:
        """Load an adapter for this model; its r and alpha replace the config's (as peft does),
        except while training, where the optimizer state was built for config.lora_r."""
        directory = Path(directory)
        cfg = read_adapter_config(directory)
        if cfg.target_modules != [MODULE]:
            raise UserError(
                f"{directory / 'adapter_config.json'}: target_modules = {cfg.target_modules}; "
                f"this model adapts only {MODULE!r}"
            )
        if self.optimizer is not None and cfg.r != self.r:
            raise UserError(f"{directory / 'adapter_config.json'}: r = {cfg.r} but this run trains lora_r = {self.r}")
        tensors = read_adapter_weights(directory, expected_shapes({MODULE: (self.dim, self.dim)}, cfg.r))
        self.r, self.alpha, self.use_rslora = cfg.r, cfg.lora_alpha, cfg.use_rslora
        # Copy into the existing arrays when training, so the optimizer keeps referring to them.
        if self.optimizer is not None:
            self.params["lora_A"][...] = tensors[KEY_A]
            self.params["lora_B"][...] = tensors[KEY_B]
        else:
            self.params = {"lora_A": tensors[KEY_A].astype(self.dtype), "lora_B": tensors[KEY_B].astype(self.dtype)}

    def save_state(self, directory: Path) -> None:
        """AdamW's moments and update count in loraswitch's portable format. Dropout is
        stateless (a function of seed, step and micro-batch), so there is no RNG state to save."""
        opt = self._optimizer("save_state")
        state = AdamWState(
            opt.t,
            {KEY_A: opt.exp_avg["lora_A"], KEY_B: opt.exp_avg["lora_B"]},
            {KEY_A: opt.exp_avg_sq["lora_A"], KEY_B: opt.exp_avg_sq["lora_B"]},
        )
        write_optimizer_state(
            Path(directory),
            state,
            weight_decay=opt.weight_decay,
            extra={"backend": self.name, "dtype": self.dtype.name},
        )

    def load_state(self, directory: Path) -> None:
        opt = self._optimizer("load_state")
        shapes = {KEY_A: self.params["lora_A"].shape, KEY_B: self.params["lora_B"].shape}
        state = read_optimizer_state(Path(directory), shapes)
        for key, name in ((KEY_A, "lora_A"), (KEY_B, "lora_B")):
            opt.exp_avg[name] = state.exp_avg[key].astype(self.dtype)
            opt.exp_avg_sq[name] = state.exp_avg_sq[key].astype(self.dtype)
        opt.t = state.step

    def describe(self) -> dict[str, Any]:
        trainable = sum(v.size for v in self.params.values())
        frozen = sum(w.size for w in (self.frozen.embed, self.frozen.proj, self.frozen.head))
        return {
            "framework": "numpy",
            "version": np.__version__,
            "device": "cpu",
            "precision": "fp32" if self.dtype == np.float32 else self.dtype.name,
            "params_total": int(trainable + frozen),
            "params_trainable": int(trainable),
            "hidden": self.dim,
            "vocab": self.vocab,
        }

    def _optimizer(self, what: str) -> AdamW:
        if self.optimizer is None:  # a programming error in the caller, not bad user input
            raise RuntimeError(f"numpy backend: {what} needs load(..., train=True) first")
        return self.optimizer

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab):
            bad = int(ids.max() if ids.max() >= self.vocab else ids.min())
            raise UserError(
                f"model: token id {bad} is outside the vocabulary (config.json vocab_size {self.vocab}); "
                "the tokenizer does not match the model"
            )


def _nucleus(logits: np.ndarray, top_p: float) -> np.ndarray:
    """Softmax restricted to the smallest set of tokens whose probability reaches ``top_p``."""
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if top_p >= 1.0:
        return probs
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
    out = np.zeros_like(probs)
    out[keep] = probs[keep]
    return out / out.sum()

"""The ``jax`` backend: a hand-written Flax NNX decoder (every family of core/models/families) with
LoRA, trained by a functional jitted step.

Flax's performance guide: ``nnx.jit`` walks the object graph in Python on every call. So the
model is split once, at load, into a graph definition and two states — the LoRA arrays
(``nnx.LoRAParam``, trained) and everything else (frozen) — and the hot loop calls the plain
``jax.jit`` functions of ``steps.py`` over those states. This class only holds the states and
does the host-side work: checks, files, the generation loop.

Every array lives on a device mesh (config ``mesh``, sharding.py): one device is a mesh of one;
several devices split each micro-batch's rows (data parallel), and with ``fsdp`` > 1 the frozen
base weights too; several hosts join through ``jax.distributed`` (processes.py) and the engine
talks to them through ``self.communicator``. LoRA weights and optimizer state are replicated,
so saving and loading see whole arrays whatever the device count.

Try it: ``loraswitch train examples/quickstart.yaml --backend jax``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from loraswitch.backends.jax_flax import lora_layout, optimizer, processes
from loraswitch.backends.jax_flax.lora import lora_scaling
from loraswitch.backends.jax_flax.model import DecoderLM, attention_path, empty_cache
from loraswitch.backends.jax_flax.options import choose_options
from loraswitch.backends.jax_flax.sharding import (
    Layout,
    gather_where_read,
    inference_layout,
    make_layout,
    put_packing,
    put_rows,
    replicate,
    to_host,
)
from loraswitch.backends.jax_flax.steps import Statics, compiled_functions
from loraswitch.backends.jax_flax.trees import named_leaves, replace_leaves
from loraswitch.backends.jax_flax.weights import load_weights, random_weights
from loraswitch.core.adapters import dropout as portable_dropout
from loraswitch.core.adapters import peft_format
from loraswitch.core.adapters.init import initial_adapter
from loraswitch.core.adapters.optimizer_state import read_state, write_state
from loraswitch.core.errors import UserError
from loraswitch.core.export.fingerprint import write_base_fingerprint
from loraswitch.core.models import families
from loraswitch.core.models.model_dir import validate_model_dir
from loraswitch.core.models.shapes import count_params
from loraswitch.core.training import activation_memory
from loraswitch.core.training.parallel import check_divisible

if TYPE_CHECKING:
    from loraswitch.core.config import Config
    from loraswitch.core.types import Batch, MicroStep, ModelSource

_GENERATE_BUCKET = 64  # prompt and cache lengths are rounded up to this, so generate compiles rarely


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@functools.cache
def _empty_cache(spec, dtype, length: int, sharding, rows: int = 1):
    """A jitted maker of a zero KV cache on every device (one compile per cache shape)."""
    return jax.jit(lambda: empty_cache(spec, dtype, rows, length), out_shardings=sharding)


class JaxBackend:
    name = "jax"

    def __init__(self) -> None:
        self._loaded = False
        self.opt_state = None
        self.communicator: processes.JaxCommunicator | None = None  # set by load (core.training.parallel)

    # ------------------------------------------------------------------ load

    def load(self, model: ModelSource, config: Config, *, train: bool = True) -> None:
        self.source, self.config = model, config
        validate_model_dir(model.path, weights=not model.random_init)  # the check every backend shares
        file = model.path / "config.json"
        self.family = families.check_config(model.config, file)
        self.spec = self.family.spec(model.config, file)  # strict: refuses what this model does not compute
        self.targets = families.resolve_target_modules(self.family, config.lora_target_modules)
        processes.initialize()  # before anything touches a device
        self.layout: Layout = make_layout(config.mesh) if train else inference_layout(config.mesh)
        if train:
            self._check_batch_size(config)  # before the weights load
        self.communicator = processes.JaxCommunicator(self.layout.size)
        self.device = jax.local_devices()[0]
        self.checkpointing = self._checkpointing_policy(model, config)
        self.options = choose_options(self.device.platform, config.precision, self.spec.head_dim, self.checkpointing)
        self.rank = config.lora_r
        dtype = jnp.dtype(self.options.dtype)
        weights = (
            random_weights(self.spec, dtype, model.init_seed, self.layout)
            if model.random_init
            else load_weights(model.path, self.spec, dtype, self.layout)
        )
        lora = replicate(self._init_lora(config.seed), self.layout)
        module = DecoderLM(
            self.spec,
            self.options,
            weights,
            lora,
            scaling=lora_scaling(config.lora_alpha, config.lora_r, config.use_rslora),
            dropout_rate=config.lora_dropout,
        )
        gather_where_read(module, self.layout)
        self.graphdef, self.lora, self.frozen = nnx.split(module, nnx.LoRAParam, ...)
        del module, weights, lora
        statics = Statics(
            self.graphdef,
            config.seed,
            self.options.prng,
            config.lora_dropout,
            config.dropout_masks,
            config.weight_decay,
            config.max_grad_norm,
            self.layout,
        )
        self.fn = compiled_functions(statics)
        init = optimizer.accumulate(self.fn.inner_tx, 1).init
        self.opt_state = jax.jit(init, out_shardings=self.layout.replicated)(self.lora) if train else None
        self._next_micro = 0
        self._no_keys = np.zeros((self.spec.num_layers, portable_dropout.N_MODULES, 2), np.uint32)
        self._loaded = True

    def _checkpointing_policy(self, model: ModelSource, config: Config) -> str:
        """Config ``gradient_checkpointing``; auto: off on CPU, dots whenever the weights are sharded
        (without remat the backward pass keeps every layer's all-gathered weights: the whole model
        on each device), else on an accelerator the first of dots, full that fits the free memory
        (dots first: on an H200 it costs no speed and saves a third of the peak, NOTES.md)."""
        setting = config.gradient_checkpointing
        if setting != "auto":
            return setting
        if self.layout.fsdp > 1:
            return "dots"
        if self.device.platform == "cpu":
            return "off"
        stats = _memory_stats(self.device) or {}
        free = stats.get("bytes_limit", 0) - stats.get("bytes_in_use", 0)
        value_bytes = 4 if config.precision == "fp32" else 2
        return activation_memory.choose(
            model.config,
            config.batch_size * config.max_seq_len // self.layout.data,
            bytes_per_value=value_bytes,
            weight_bytes=count_params(model.config) * value_bytes,
            free_bytes=free,
            preference=("dots", "full"),
        )

    def _check_batch_size(self, config: Config) -> None:
        try:
            check_divisible(config.batch_size, self.layout.size)
        except UserError as e:
            if config.mesh is not None or jax.process_count() > 1:
                raise
            raise UserError(
                f"{e} (mesh: null trains on all {self.layout.size} devices jax sees; to use fewer, "
                "hide the others, e.g. CUDA_VISIBLE_DEVICES=0)"
            ) from None

    def _init_lora(self, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The core's initial adapter (A drawn with numpy from seed and module path, B zero),
        stacked over layers: the same numbers every backend starts from."""
        tensors = initial_adapter(seed, lora_layout.module_features(self.spec, self.targets), self.rank)
        stacked = lora_layout.from_peft(tensors, self.spec, self.targets, self.rank)
        return {
            name: (stacked[lora_layout.state_name(name, "A")], stacked[lora_layout.state_name(name, "B")])
            for name in self.targets
        }

    def _require(self, train: bool = False) -> None:
        if not self._loaded:
            raise RuntimeError("JaxBackend: call load() first")
        if train and self.opt_state is None:
            raise RuntimeError("JaxBackend: loaded with train=False; no optimizer")

    # ------------------------------------------------------------------ training

    def micro_step(self, micro: MicroStep):
        self._require(train=True)
        # The core decides the windows; MultiSteps counts them itself. Check they agree (host only, no sync).
        if micro.micro != self._next_micro or micro.apply_update != (micro.micro == micro.window_size - 1):
            raise RuntimeError(
                f"accumulation out of step: core sent micro {micro.micro}/{micro.window_size} "
                f"(apply_update={micro.apply_update}), backend expected micro {self._next_micro}"
            )
        self.lora, self.opt_state, loss = self.fn.micro_step(
            self.lora,
            self.opt_state,
            self.frozen,
            *put_rows(micro.batch, self.layout),
            put_packing(micro.batch, self.layout),
            np.float32(micro.weight),
            np.float32(micro.lr),
            np.int32(micro.window_size),
            np.int32(micro.step),
            np.int32(micro.micro),
            self._dropout_keys(micro),
        )
        self._next_micro = 0 if micro.apply_update else micro.micro + 1
        return loss

    def _dropout_keys(self, micro: MicroStep) -> np.ndarray:
        """The core's portable key table of this micro-step (uint32 [layers, modules, 2]); zeros,
        unused, when there is no dropout or masks come from jax.random."""
        if self.config.dropout_masks != "portable" or self.config.lora_dropout == 0:
            return self._no_keys
        return portable_dropout.key_table(self.config.seed, micro.step, micro.micro, self.spec.num_layers)

    def eval_loss(self, batch: Batch) -> tuple[float, int]:
        self._require()
        loss = self.fn.eval_loss(self.lora, self.frozen, *put_rows(batch, self.layout), put_packing(batch, self.layout))
        return float(loss), batch.n_targets

    def logits(self, batch: Batch) -> np.ndarray:
        self._require()
        ids, mask, _ = put_rows(batch, self.layout)
        logits = np.asarray(self.fn.logits(self.lora, self.frozen, ids, mask), np.float32)
        return logits[: batch.input_ids.shape[0]]  # without the filler rows put_rows may add

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
        """New tokens after the prompt, without the stop token that ended generation."""
        self._require()
        if not prompt_ids:
            raise UserError("generate: the prompt is empty")
        if max_new_tokens <= 0:
            return []
        n = len(prompt_ids)
        padded = _round_up(n, _GENERATE_BUCKET)
        length = max(padded, _round_up(n + max_new_tokens, _GENERATE_BUCKET))
        ids = np.zeros((1, padded), np.int32)
        ids[0, :n] = prompt_ids
        cache = _empty_cache(self.spec, jnp.dtype(self.options.dtype), length, self.layout.replicated)()
        root = jax.random.PRNGKey(seed)
        temperature, top_p = np.float32(temperature), np.float32(top_p)
        token, cache = self.fn.extend(
            self.lora,
            self.frozen,
            cache,
            ids,
            np.int32(0),
            np.int32(n - 1),
            jax.random.fold_in(root, 0),
            temperature,
            top_p,
        )
        out: list[int] = []
        for i in range(max_new_tokens):
            t = int(token)
            if t in stop_ids:
                break
            out.append(t)
            if i + 1 == max_new_tokens:
                break
            token, cache = self.fn.extend(
                self.lora,
                self.frozen,
                cache,
                np.array([[t]], np.int32),
                np.int32(n + i),
                np.int32(0),
                jax.random.fold_in(root, i + 1),
                temperature,
                top_p,
            )
        return out

    def generate_batch(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop_ids: tuple[int, ...] = (),
        pad_id: int = 0,
    ) -> list[list[int]]:
        """``generate`` for each prompt in one batch: the prompts left-padded to a common bucket
        width (so every row's newest token sits in the same cache slot), the padding hidden by a
        per-row key mask and each row's positions counted from its first real token."""
        self._require()
        if any(not p for p in prompts):
            raise UserError("generate: a prompt is empty")
        if max_new_tokens <= 0:
            return [[] for _ in prompts]
        width = _round_up(max(len(p) for p in prompts), _GENERATE_BUCKET)
        # rows rounded up to a power of two (filler rows repeat the first prompt), so the
        # remainder batch of an evaluation compiles one of a few shapes
        filled = list(prompts) + [prompts[0]] * ((1 << (len(prompts) - 1).bit_length()) - len(prompts))
        ids = np.full((len(filled), width), pad_id, np.int32)
        left_pad = np.array([width - len(p) for p in filled], np.int32)
        for row, p in enumerate(filled):
            ids[row, left_pad[row] :] = p
        length = _round_up(width + max_new_tokens, _GENERATE_BUCKET)
        cache = _empty_cache(self.spec, jnp.dtype(self.options.dtype), length, self.layout.replicated, len(filled))()
        root = jax.random.PRNGKey(seed)
        settings = (np.float32(temperature), np.float32(top_p))
        tokens, cache = self.fn.extend_rows(
            self.lora, self.frozen, cache, ids, np.int32(0), left_pad, jax.random.fold_in(root, 0), *settings
        )
        out: list[list[int]] = [[] for _ in filled]
        done = np.arange(len(filled)) >= len(prompts)  # filler rows count as done
        for i in range(max_new_tokens):
            step = np.asarray(tokens).astype(np.int32)
            for row in np.flatnonzero(~done):
                if int(step[row]) in stop_ids:
                    done[row] = True
                else:
                    out[row].append(int(step[row]))
                    done[row] = len(out[row]) == max_new_tokens
            if done.all():
                break
            step[done] = pad_id
            tokens, cache = self.fn.extend_rows(
                self.lora, self.frozen, cache, step[:, None], np.int32(width + i), left_pad,
                jax.random.fold_in(root, i + 1), *settings,
            )  # fmt: skip
        return out[: len(prompts)]

    # ------------------------------------------------------------------ adapters and state

    def save_adapter(self, directory: Path) -> None:
        self._require()
        lora = {name: to_host(v) for name, v in named_leaves(self.lora).items()}
        config = peft_format.AdapterConfig.of_run(self.config, self.source.name, self.targets)
        peft_format.write_adapter(Path(directory), config, lora_layout.to_peft(lora, self.spec, self.targets))
        write_base_fingerprint(Path(directory), self.source.path, self.source.name)  # checked by `loraswitch merge`

    def load_adapter(self, directory: Path) -> None:
        self._require()
        directory = Path(directory)
        peft_format.check_matches_run(peft_format.read_adapter_config(directory), self.config, directory, self.targets)
        expected = peft_format.expected_shapes(lora_layout.module_features(self.spec, self.targets), self.rank)
        tensors = peft_format.read_adapter_weights(directory, expected)
        arrays = lora_layout.from_peft(tensors, self.spec, self.targets, self.rank)
        self.lora = replace_leaves(self.lora, replicate(arrays, self.layout))

    def save_state(self, directory: Path) -> None:
        self._require(train=True)
        state = jax.tree.map(to_host, self.opt_state)  # whole arrays: replicated, so no collective
        if int(state.mini_step) != self._next_micro:
            raise RuntimeError(
                f"optimizer is at micro {int(state.mini_step)} but the backend counted {self._next_micro}"
            )
        extra = {"backend": self.name, "framework": f"jax {jax.__version__}", "seed": self.config.seed}
        portable = optimizer.to_portable(state, self.spec, self.targets)
        write_state(Path(directory), portable, weight_decay=self.config.weight_decay, extra=extra)

    def load_state(self, directory: Path) -> None:
        self._require(train=True)
        expected = peft_format.expected_shapes(lora_layout.module_features(self.spec, self.targets), self.rank)
        portable = read_state(Path(directory), expected)
        state = optimizer.from_portable(self.opt_state, portable, self.spec, self.targets, self.rank)
        self.opt_state = replicate(state, self.layout)
        self._next_micro = 0

    # ------------------------------------------------------------------ facts

    @staticmethod
    def _versions() -> dict[str, str]:
        import flax

        return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}

    def _packed_attention(self) -> str:
        if self.spec.mixed_windows or self.options.packed_attention != "cudnn":
            return "xla (segment mask)"
        return "cudnn (segment mask as bias)"

    def describe(self) -> dict[str, Any]:
        self._require()
        trainable = sum(math.prod(x.shape) for x in jax.tree.leaves(self.lora))
        frozen = sum(math.prod(x.shape) for x in jax.tree.leaves(self.frozen))
        facts: dict[str, Any] = {
            "backend": self.name,
            "framework": f"jax {jax.__version__} + flax {self._versions()['flax']} + optax {optax.__version__}",
            **self._versions(),
            "device": self.device.platform
            if self.device.platform == "cpu"
            else f"{self.device.platform} ({self.device.device_kind})",
            "device_count": self.layout.size,
            "processes": jax.process_count(),
            "parallel": self.layout.describe(),
            "mesh": {"data": self.layout.data, "fsdp": self.layout.fsdp},
            "precision": "bf16" if self.options.dtype == "bfloat16" else "fp32",
            "architecture": self.spec.architecture,
            # Windows that differ between layers always take XLA's kernel with an explicit mask (model.py).
            "attention": attention_path(self.spec, self.options),
            "gradient_checkpointing": activation_memory.describe(
                self.config.gradient_checkpointing, self.checkpointing
            ),
            # Packed batches (packing: true): the same kernel with a same-segment mask [B, 1, T, T] (model.py)
            "attention_packed": self._packed_attention(),
            "remat": self.options.remat,
            "loss_chunk_tokens": self.options.loss_chunk,
            "params_total": trainable + frozen,
            "params_trainable": trainable,
        }
        peaks = [
            stats["peak_bytes_in_use"]
            for stats in map(_memory_stats, jax.local_devices())
            if stats and "peak_bytes_in_use" in stats
        ]
        if peaks:
            facts["peak_memory_bytes"] = int(max(peaks))  # of the busiest device
        return facts


def _memory_stats(device) -> dict[str, Any] | None:
    return device.memory_stats() if hasattr(device, "memory_stats") else None

"""TorchBackend: the core's Backend protocol on transformers + peft.

The hot path (``micro_step``) is: decoder forward (each layer through one torch.compile'd
function, layer_calls.py) -> gather the rows that predict a target -> chunked cross-entropy
through the frozen lm_head -> backward, and on the window's last micro-batch one fused AdamW step.
Nothing in it waits for the device: the returned loss stays a tensor until the engine converts it
once per window.

Under torchrun (WORLD_SIZE > 1) each process trains its contiguous block of every global
micro-batch, through DDP or, with ``mesh: {fsdp: N}``, with FSDP2-sharded base weights
(``processes.py``); the LoRA weights and optimizer state stay whole on every process.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loraswitch.backends.torch_peft import adapter, layer_calls, optimizer, processes
from loraswitch.backends.torch_peft import dropout as portable_dropout
from loraswitch.backends.torch_peft.attention import attention_choice, attention_context, kernel_used
from loraswitch.backends.torch_peft.generation import generate_batch_tokens, generate_tokens
from loraswitch.backends.torch_peft.loss import chunk_loss, chunk_loss_and_grad, target_cross_entropy, target_positions
from loraswitch.backends.torch_peft.model import Placement, choose_placement, load_base_model, resolve_targets
from loraswitch.core.adapters import optimizer_state, peft_format
from loraswitch.core.adapters.init import initial_adapter
from loraswitch.core.backend import LossValue
from loraswitch.core.config import Config
from loraswitch.core.export.fingerprint import write_base_fingerprint
from loraswitch.core.training import activation_memory
from loraswitch.core.training.parallel import mesh_sizes, shard_rows
from loraswitch.core.types import Batch, MicroStep, ModelSource

# What packed batches (packing: true) run: transformers' packed-sequence mask from position_ids.
PACKED_ATTENTION = "sdpa (document mask [B, 1, T, T] from position_ids)"


def dropout_seed(seed: int, step: int, micro: int, rank: int | None = None) -> int:
    """With ``dropout_masks: framework``, a stateless seed for torch's generator in one
    micro-step: resume replays the same masks without saving any RNG state. SeedSequence mixes
    the numbers without collisions that a linear formula would have, and unlike ``hash`` it is
    stable across processes. Processes of one run pass their ``rank``, so their blocks of a
    micro-batch get independent masks."""
    entropy = [seed, step, micro] if rank is None else [seed, step, micro, rank]
    words = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) | (int(words[1]) >> 1)


class TorchBackend:
    name = "torch"

    def __init__(self, device: str | None = None):
        self.requested_device = device
        self.model = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.group: processes.ProcessGroup | None = None  # set under torchrun
        self.communicator = None  # the core's view of self.group (core.training.parallel.Communicator)

    @classmethod
    def from_environment(cls) -> TorchBackend:
        """``LORASWITCH_TORCH_DEVICE`` (``cuda:1``, ``cpu``) pins the device; default: CUDA if present."""
        return cls(device=os.environ.get("LORASWITCH_TORCH_DEVICE") or None)

    # ------------------------------------------------------------------ setup

    def load(self, model: ModelSource, config: Config, *, train: bool = True) -> None:
        from peft import LoraConfig, get_peft_model

        self.config, self.source = config, model
        device = self.requested_device
        if processes.launched_with_several_processes():
            device = processes.process_device(self.requested_device)
            self.group = self.communicator = processes.start(device, config.mesh, config.batch_size)
        else:
            mesh_sizes(
                config.mesh,
                1,
                unit="processes",
                hint="; torch runs one process per device: torchrun --nproc_per_node N -m loraswitch.core.cli train ...",
            )
        self.placement: Placement = choose_placement(config.precision, config.compile, device)
        self._attention = attention_context(attention_choice(self.placement.device))
        sharded = self.group is not None and self.group.sharded

        def lora_config(targets: list[str]) -> LoraConfig:
            return LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=targets,
                use_rslora=config.use_rslora,
                bias="none",
                task_type="CAUSAL_LM",
            )

        with warnings.catch_warnings():  # peft probes a property transformers 5 deprecates
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            if sharded:
                from loraswitch.backends.torch_peft.sharding import load_sharded_peft_model

                targets = _checked_targets_on_meta(model, config.lora_target_modules)
                self.model = load_sharded_peft_model(model, self.placement, lora_config(targets), self.group)
            else:
                base = load_base_model(model, self.placement)
                targets = resolve_targets(model, base, config.lora_target_modules)
                # LoRA weights stay fp32 under a bf16 base (autocast_adapter_dtype), so AdamW updates them in fp32.
                self.model = get_peft_model(base, lora_config(targets), autocast_adapter_dtype=True)
        self.targets = targets
        self.autocast = self.placement.dtype == torch.bfloat16
        if self.autocast:
            # Under autocast the LoRA matmuls run in bf16; peft's own cast of the input to the fp32
            # LoRA dtype would only add a full-size fp32 copy of every projection's input.
            for module in self.model.modules():
                if hasattr(module, "cast_input_dtype_enabled"):
                    module.cast_input_dtype_enabled = False
        self.params = adapter.lora_parameters(self.model)
        # The core draws the initial adapter (numpy, seeded by seed and module path): the same
        # numbers on every backend and device, instead of peft's draw from torch's generator.
        adapter.copy_into(
            self.params, initial_adapter(config.seed, adapter.module_features(self.params), config.lora_r)
        )
        self._dropout_keys = self._portable_dropout(config)
        causal_lm = self.model.get_base_model()
        self.decoder, self.head = causal_lm.model, causal_lm.lm_head
        self.checkpointing = self._checkpointing_policy(model, config)
        # Under FSDP2 the layers' hooks (which gather and free the shards) stay outside the
        # compiled code: only each layer's own forward is compiled (layer_calls.py).
        layer_calls.install(self.decoder.layers, self.checkpointing, compile=self.placement.compile)
        self._loss_fn, self._loss_and_grad_fn = chunk_loss, chunk_loss_and_grad
        if self.placement.compile:
            self._loss_fn = torch.compile(chunk_loss)
            self._loss_and_grad_fn = torch.compile(chunk_loss_and_grad)

        self._ddp = None
        self._window: processes.WindowLosses | None = None
        if self.group is not None and not sharded:
            loss_module = processes.TargetLossModule(self.decoder, self.head, self._target_loss)
            self._ddp = processes.wrap_ddp(loss_module, self.group)
        self.optimizer = None
        if train:
            self.optimizer = torch.optim.AdamW(
                list(self.params.values()),
                lr=config.learning_rate_multiplier,
                betas=optimizer_state.BETAS,
                eps=optimizer_state.EPS,
                weight_decay=config.weight_decay,
                fused=self.placement.device.type == "cuda",
            )
            self.model.train()
        else:
            self.model.eval()

    def _checkpointing_policy(self, model: ModelSource, config: Config) -> str:
        """Config ``gradient_checkpointing``; auto: off on CPU, on CUDA the first of off, dots,
        full whose estimated peak fits the free memory (core.training.activation_memory)."""
        setting = config.gradient_checkpointing
        if setting != "auto":
            return setting
        device = self.placement.device
        if device.type != "cuda":
            return "off"
        base = [p for n, p in self.model.named_parameters() if ".lora_" not in n]
        data_parallel = self.group.data_parallel_size if self.group is not None else 1
        return activation_memory.choose(
            model.config,
            config.batch_size * config.max_seq_len // data_parallel,
            bytes_per_value=2 if self.placement.dtype == torch.bfloat16 else 4,
            weight_bytes=sum(p.numel() * p.element_size() for p in base),
            free_bytes=torch.cuda.mem_get_info(device)[0],
        )

    def _portable_dropout(self, config: Config) -> portable_dropout.KeyTable | None:
        """Replace peft's dropout modules by the portable mask (config dropout_masks), keyed by
        a table this backend refreshes every micro-step; None when masks come from torch's RNG."""
        if config.dropout_masks != "portable" or config.lora_dropout == 0:
            return None
        first_row = 0
        if self.group is not None:  # this process holds a block of every global micro-batch
            first_row = self.group.rank * (config.batch_size // self.group.data_parallel_size)
        layers = self.model.get_base_model().config.num_hidden_layers
        keys = portable_dropout.KeyTable(config.seed, layers, self.placement.device, first_row)
        portable_dropout.install(self.model, keys, adapter.ADAPTER_NAME)
        return keys

    def _seed_dropout(self, micro: MicroStep) -> None:
        """The dropout masks of this micro-step: the portable keys, or torch's generator reseeded."""
        if self._dropout_keys is not None:
            self._dropout_keys.set_step(micro.step, micro.micro)
        else:
            rank = self.group.rank if self.group is not None else None
            torch.manual_seed(dropout_seed(self.config.seed, micro.step, micro.micro, rank))

    def lora_parameters(self) -> dict[str, torch.nn.Parameter]:
        """LoRA parameters by PEFT file name (for tests and tools)."""
        return self.params

    # ------------------------------------------------------------------ training

    def micro_step(self, micro: MicroStep) -> torch.Tensor:
        if self.optimizer is None:
            raise RuntimeError("micro_step needs a backend loaded with train=True")
        self._seed_dropout(micro)
        if self.group is not None:
            return self._distributed_micro_step(micro)
        loss = self._target_loss(micro.batch) * micro.weight
        loss.backward()
        if micro.apply_update:
            self._apply_update(micro.lr)
        return loss.detach()

    def _distributed_micro_step(self, micro: MicroStep) -> LossValue:
        """This process's rows of the global micro-batch, with the global weight; gradients are
        summed over processes on the window's last micro-batch (DDP's hook, or one all-reduce of
        the LoRA gradients under FSDP), so every process applies the same update."""
        group = self.group
        batch = shard_rows(micro.batch, group.rank, group.data_parallel_size)
        if self._ddp is not None:
            sync = contextlib.nullcontext() if micro.apply_update else self._ddp.no_sync()
            with sync:
                loss = self._ddp(batch) * micro.weight
                loss.backward()
        else:
            loss = self._target_loss(batch) * micro.weight
            loss.backward()
        if self._window is None:
            self._window = processes.WindowLosses()
        contribution = self._window.add(loss)
        if micro.apply_update:
            if self._ddp is None:
                params = list(self.params.values())
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                group.all_reduce_sum_([p.grad for p in params])
            self._apply_update(micro.lr)
            self._window.reduce(group)
            self._window = None
        return contribution

    def _apply_update(self, lr: float) -> None:
        params = list(self.params.values())
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm, foreach=True)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _decoder_hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state

    def _target_loss(self, batch: Batch) -> torch.Tensor:
        """Sum of cross-entropy over the batch's targets (grad-enabled unless called under no_grad)."""
        rows, targets = target_positions(batch.labels)
        # A process whose rows hold no target still runs the whole graph, scaled by 0, so that
        # DDP sees a gradient for every LoRA weight (LoRA on lm_head included) on every process.
        scale = 0.0 if self.group is not None and rows.size == 0 else None
        if scale is not None:
            rows, targets = np.zeros(1, np.int64), np.zeros(1, np.int64)
        input_ids, attention_mask = self._inputs(batch, causal_suffices=True)
        position_ids = None
        if batch.position_ids is not None:
            # Packed rows: per-example positions and no 2D mask. transformers' masking_utils then
            # finds the examples from where the positions restart (find_packed_sequence_indices)
            # and builds a causal mask that never crosses them, with the model's sliding windows:
            # for SDPA one boolean [B, 1, T, T] mask shared by the heads (attention.py).
            attention_mask, position_ids = None, self._to_device(np.asarray(batch.position_ids, dtype=np.int64))
        with self._autocast(), self._attention(), layer_calls.compiled_calls():
            hidden = self._decoder_hidden(input_ids, attention_mask, position_ids)
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, self._to_device(rows))
        tokens = None  # an adapted lm_head's portable dropout needs the global index of each row
        if self._dropout_keys is not None:
            tokens = self._to_device(rows + self._dropout_keys.first_row * batch.labels.shape[1])
        loss = target_cross_entropy(
            hidden,
            self.head,
            self._to_device(targets),
            loss_fn=self._loss_fn,
            loss_and_grad_fn=self._loss_and_grad_fn,
            tokens=tokens,
            softcap=getattr(self.decoder.config, "final_logit_softcapping", None),
        )
        return loss if scale is None else loss * scale

    # ------------------------------------------------------------------ evaluation

    def eval_loss(self, batch: Batch) -> tuple[float, int]:
        if self.group is not None:  # each process its rows; every process gets the global sum
            local = shard_rows(batch, self.group.rank, self.group.data_parallel_size)
            with torch.no_grad(), self._eval_mode():
                loss = self._target_loss(local).detach().float().reshape(1)
            self.group.all_reduce_sum_([loss])
            return float(loss), batch.n_targets
        with torch.no_grad(), self._eval_mode():
            loss = self._target_loss(batch)
        return float(loss), batch.n_targets

    def logits(self, batch: Batch) -> np.ndarray:
        input_ids, attention_mask = self._inputs(batch, causal_suffices=False)
        with torch.no_grad(), self._eval_mode(), self._autocast():
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.logits.float().cpu().numpy()

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
        with self._eval_mode(), self._autocast():
            return generate_tokens(
                self.model.get_base_model(),
                list(prompt_ids),
                self.placement.device,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                stop_ids=tuple(stop_ids),
            )

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
        """``generate`` for each prompt, in one left-padded batch with one KV cache."""
        with self._eval_mode(), self._autocast():
            return generate_batch_tokens(
                self.model.get_base_model(),
                [list(p) for p in prompts],
                self.placement.device,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                stop_ids=tuple(stop_ids),
                pad_id=pad_id,
            )

    # ------------------------------------------------------------------ files

    def save_adapter(self, directory: Path) -> None:
        config = peft_format.AdapterConfig.of_run(self.config, self.source.name, self.targets)
        peft_format.write_adapter(Path(directory), config, adapter.to_arrays(self.params))
        write_base_fingerprint(Path(directory), self.source.path, self.source.name)  # checked by `loraswitch merge`

    def load_adapter(self, directory: Path) -> None:
        directory = Path(directory)
        peft_format.check_matches_run(peft_format.read_adapter_config(directory), self.config, directory, self.targets)
        adapter.copy_into(self.params, peft_format.read_adapter_weights(directory, adapter.shapes(self.params)))

    def save_state(self, directory: Path) -> None:
        if self.optimizer is None:
            raise RuntimeError("save_state needs a backend loaded with train=True")
        extra = {"backend": self.name, "framework": f"torch {torch.__version__}", "seed": self.config.seed}
        optimizer.save_optimizer_state(self.optimizer, self.params, Path(directory), extra)

    def load_state(self, directory: Path) -> None:
        if self.optimizer is None:
            raise RuntimeError("load_state needs a backend loaded with train=True")
        optimizer.load_optimizer_state(self.optimizer, self.params, Path(directory))

    def describe(self) -> dict[str, Any]:
        import peft
        import transformers

        device = self.placement.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        unique = {id(p): p for p in self.model.parameters()}.values()
        return {
            "backend": self.name,
            "framework": f"torch {torch.__version__}",
            "libraries": {"transformers": transformers.__version__, "peft": peft.__version__},
            "device": f"{device} ({name})" if device.type == "cuda" else "cpu",
            "precision": self.placement.precision,
            "compile": self.placement.compile,
            "gradient_checkpointing": activation_memory.describe(
                self.config.gradient_checkpointing, self.checkpointing
            ),
            "attention": self._attention_kernel(),
            "attention_packed": PACKED_ATTENTION,
            "params_total": sum(p.numel() for p in unique),
            "params_trainable": sum(p.numel() for p in unique if p.requires_grad),
            "processes": self.group.world_size if self.group is not None else 1,
            "device_count": self.group.world_size if self.group is not None else 1,  # one device per process
            "mesh": {"data": self.group.data, "fsdp": self.group.fsdp} if self.group is not None else None,
            "parallel": self.group.layout if self.group is not None else "none",
        }

    # ------------------------------------------------------------------ helpers

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.placement.device.type == "cuda":
            return tensor.pin_memory().to(self.placement.device, non_blocking=True)
        return tensor

    def _inputs(self, batch: Batch, *, causal_suffices: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids and attention mask on the device. With right padding the causal mask alone
        gives every real token exactly the same attention, so training and eval drop the padding
        mask and SDPA can take its fused causal kernels; ``logits`` keeps it, as HF would."""
        mask = np.asarray(batch.attention_mask) != 0
        input_ids = self._to_device(np.asarray(batch.input_ids, dtype=np.int64))
        lengths = mask.sum(axis=1)
        right_padded = np.array_equal(mask, np.arange(mask.shape[1])[None, :] < lengths[:, None])
        if (causal_suffices and right_padded) or mask.all():
            return input_ids, None
        return input_ids, self._to_device(mask.astype(np.int64))

    def _attention_kernel(self) -> str:
        """The SDPA kernel of a causal call, and of the sliding-window layers' masked calls."""
        c = self.model.get_base_model().config
        if c._attn_implementation == "eager":  # chosen where SDPA cannot express the attention
            return "eager (exact: attention-logit soft-capping, which SDPA cannot express)"
        heads = c.num_attention_heads
        shape = (
            heads,
            getattr(c, "num_key_value_heads", None) or heads,
            getattr(c, "head_dim", None) or c.hidden_size // heads,
        )
        device, dtype = self.placement.device, self.placement.dtype
        causal = kernel_used(self._attention, device, *shape, dtype)
        if not _has_sliding_layers(c):
            return causal
        masked = kernel_used(self._attention, device, *shape, dtype, masked=True)
        return f"{causal}; sliding-window layers: {masked} with an explicit window mask (rows longer than the window)"

    def _autocast(self):
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.placement.device.type, dtype=torch.bfloat16)

    @contextlib.contextmanager
    def _eval_mode(self):
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)


def _has_sliding_layers(config: Any) -> bool:
    """Whether some layer attends through a sliding window (transformers then passes SDPA a mask)."""
    if not getattr(config, "sliding_window", None):
        return False
    layer_types = getattr(config, "layer_types", None)
    return layer_types is None or "sliding_attention" in layer_types


def _checked_targets_on_meta(model: ModelSource, targets: list[str]) -> list[str]:
    """resolve_targets on a shapes-only model, for the sharded path that never builds a whole one."""
    from loraswitch.backends.torch_peft.model import _hf_config, _model_class, architecture_of

    architecture = architecture_of(model)
    with torch.device("meta"):
        skeleton = _model_class(architecture)(_hf_config(model, architecture))
    return resolve_targets(model, skeleton, targets)

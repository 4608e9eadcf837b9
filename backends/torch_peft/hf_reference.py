"""The torch peers in ``loraswitch bench``: plain transformers + peft, the loop their documentation shows.

``hf-reference`` is what a user would write instead of using loraswitch, so it stays deliberately
plain: no torch.compile, no fused loss, no tricks. It mirrors the anchor measurement behind the
published reference numbers (docs/benchmarks.md): the model's transformers class
(LlamaForCausalLM, Qwen3ForCausalLM...) built from its config, SDPA
attention, bf16 on CUDA (fp32 on CPU), ``get_peft_model``, fused AdamW on CUDA,
``loss.backward()`` on each micro-batch's loss scaled by its share of the window's target tokens
(what transformers' Trainer does with ``num_items_in_batch``; ``loss / accumulation_steps`` when
every micro-batch has as many targets), ``opt.step()``, ``opt.zero_grad()``. In real-length mode
(``--lengths``) each micro-batch is padded to its own longest example, with the attention mask
and -100 labels on the padding, as transformers' ``DataCollatorWithPadding`` gives it.

``hf-compile`` is the same loop with ``torch.compile(model)``: what a careful torch user runs,
the strongest plain peer. ``hf-liger`` (only where liger-kernel is installed) patches the model
with Liger's fused kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy); its loss is
reported beside its speed, since Liger with torch.compile has been seen returning a wrong loss.
torch, transformers and peft are imported inside ``load`` so importing this module stays light.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from loraswitch.core.bench.protocol import BenchSettings
from loraswitch.core.types import Batch, ModelSource

VARIANTS = {"hf-reference": "eager", "hf-compile": "compile", "hf-liger": "liger"}


class HFReference:
    def __init__(
        self, settings: BenchSettings, source: ModelSource, windows: list[list[Batch]], name: str = "hf-reference"
    ):
        self.name, self.variant = name, VARIANTS[name]
        self.settings = settings
        self.source = source
        self.batches = windows  # each step's micro-batches (core.bench.worker.windows_of)

    def load(self) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoConfig, AutoModelForCausalLM

        from loraswitch.backends.torch_peft import layer_calls
        from loraswitch.backends.torch_peft.model import attention_implementation
        from loraswitch.core.models import families

        s = self.settings
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if s.precision == "bf16" else torch.float32
        attention = attention_implementation(self.source)  # eager for Gemma 2's soft-capped attention
        if self.source.random_init:
            # A model from its config, built on the device, holding the core's random values: the
            # very model the loraswitch systems train (core/models/random_values.py).
            from loraswitch.backends.torch_peft.random_init import fill_model

            cfg = AutoConfig.from_pretrained(self.source.path)
            with torch.device(self.device):
                model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attention)
            fill_model(model, self.source.init_seed)
            model = model.to(dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                self.source.path, dtype=dtype, attn_implementation=attention, use_safetensors=True
            ).to(self.device)
        if self.variant == "liger":
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(model=model)
        torch.manual_seed(s.seed)
        # all-linear means the block's linears here too (peft's own all-linear differs in corner cases).
        family = families.check_config(self.source.config, self.source.path / "config.json")
        targets = families.resolve_target_modules(family, s.lora_target_modules, also=("lm_head",))
        lora = LoraConfig(
            r=s.lora_r,
            lora_alpha=s.lora_alpha,
            lora_dropout=s.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(model, lora)
        self.model.train()
        # auto: the baseline as users run it, nothing recomputed; a named policy: the same layers
        # recomputed the same way as in the loraswitch systems (like for like).
        self.checkpointing = "off" if s.gradient_checkpointing == "auto" else s.gradient_checkpointing
        if layer_calls.install(model.model.layers, self.checkpointing):
            model.config.use_cache = False  # as transformers' own switch does: a KV cache is global state
        self.forward = self.model
        if self.variant == "compile":
            # LORASWITCH_HF_COMPILE_BACKEND=aot_eager lets a CPU test run the compiled path
            # without inductor's C++ build (minutes on 2 cores); the report records the variable.
            backend = os.environ.get("LORASWITCH_HF_COMPILE_BACKEND", "inductor")
            self.forward = torch.compile(self.model, backend=backend)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.params_trainable = sum(p.numel() for p in params)
        self.params_total = sum(p.numel() for p in self.model.parameters())
        self.opt = torch.optim.AdamW(
            params, lr=s.learning_rate, weight_decay=s.weight_decay, fused=self.device == "cuda"
        )
        # All the data on the device before the clock starts, as in the anchor.
        self.data = [[self._on_device(b) for b in window] for window in self.batches]

    def _on_device(self, batch: Batch) -> tuple[Any, Any, Any, float]:
        """(input_ids, attention_mask or None when nothing is padding, labels, targets)."""
        torch = self.torch
        ids = torch.from_numpy(np.asarray(batch.input_ids)).to(self.device, torch.long)
        mask = None
        if not np.asarray(batch.attention_mask).all():
            mask = torch.from_numpy(np.asarray(batch.attention_mask)).to(self.device, torch.long)
        labels = torch.from_numpy(np.asarray(batch.labels)).to(self.device, torch.long)
        return ids, mask, labels, float(batch.n_targets)

    def window(self, step: int) -> list[Any]:
        """One optimizer step: a forward/backward pass per micro-batch, then AdamW. Returns each
        micro-batch's share of the window's token-mean loss as device tensors (no host sync)."""
        window = self.data[step]
        total = sum(n for *_, n in window)
        losses = []
        for ids, mask, labels, n in window:
            loss = self.forward(input_ids=ids, attention_mask=mask, labels=labels).loss * (n / total)
            loss.backward()
            losses.append(loss.detach())
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return losses

    @staticmethod
    def window_loss(values: list[Any]) -> float:
        """The window's token-mean loss: the sum of the micro-batches' weighted shares."""
        return sum(float(v) for v in values)

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def describe(self) -> dict[str, Any]:
        import peft
        import transformers

        torch = self.torch
        return {
            "framework": f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
            "device": torch.cuda.get_device_name() if self.device == "cuda" else "cpu",
            "device_type": "gpu" if self.device == "cuda" else "cpu",
            "precision": self.settings.precision,
            "params_total": self.params_total,
            "params_trainable": self.params_trainable,
            "compile": self.variant == "compile",
            "variant": self.variant,
            "gradient_checkpointing": self.checkpointing,
        }

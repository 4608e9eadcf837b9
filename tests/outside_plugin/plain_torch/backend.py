"""PlainTorchBackend: the Backend protocol with hand-written LoRA layers.

What makes it match the other backends is all in the public API: the initial adapter
(``initial_adapter``), the dropout masks (``key_table`` + ``element_hash``, computed here in
int64), AdamW's constants, and the adapter and optimizer files. The rest is ordinary PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from loraswitch.core.api import (
    ADAMW_BETAS,
    ADAMW_EPS,
    IGNORE_INDEX,
    PROJECTIONS,
    AdamWState,
    AdapterConfig,
    UserError,
    check_matches_run,
    dropout_site,
    element_hash,
    initial_adapter,
    key_table,
    module_paths,
    read_adapter_config,
    read_adapter_weights,
    read_optimizer_state,
    resolve_target_modules,
    scale,
    tensor_name,
    threshold,
    write_adapter,
    write_optimizer_state,
)


class Keys:
    """The portable dropout keys of the current micro-step, [layers, modules, 2] int64."""

    def __init__(self, seed: int, num_layers: int):
        self.seed, self.num_layers = seed, num_layers
        self.table = torch.zeros(key_table(seed, 0, 0, num_layers).shape, dtype=torch.int64)

    def set_step(self, step: int, micro: int) -> None:
        self.table.copy_(torch.from_numpy(key_table(self.seed, step, micro, self.num_layers).astype(np.int64)))


class PortableDropout(torch.nn.Module):
    """docs/plugins.md: hash (token key, feature key) with the global token and feature index;
    torch holds the 32-bit values in int64 (``wide=True``)."""

    def __init__(self, rate: float, site: tuple[int, int], keys: Keys):
        super().__init__()
        self.rate, self.site, self.keys = rate, site, keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0:
            return x
        token_key, feature_key = self.keys.table[self.site]
        tokens = torch.arange(x.shape[0] * x.shape[1], dtype=torch.int64).reshape(x.shape[:2])
        features = torch.arange(x.shape[-1], dtype=torch.int64)
        keep = element_hash(token_key, feature_key, tokens, features, wide=True) >= threshold(self.rate)
        return torch.where(keep, x * scale(self.rate), torch.zeros((), dtype=x.dtype))


class LoRALinear(torch.nn.Module):
    """y = base(x) + B(A(dropout(x))) * scaling, A [r, in] and B [out, r] as PEFT lays them out."""

    def __init__(self, base: torch.nn.Linear, r: int, scaling: float, dropout: torch.nn.Module):
        super().__init__()
        self.base, self.scaling, self.dropout = base, scaling, dropout
        self.lora_A = torch.nn.Parameter(torch.zeros(r, base.in_features))
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling


class PlainTorchBackend:
    name = "plain-torch"

    def load(self, model, config, *, train: bool = True) -> None:
        import transformers

        self.config, self.source = config, model
        architecture = (model.config.get("architectures") or ["?"])[0]
        if architecture not in ("LlamaForCausalLM", "MistralForCausalLM"):
            raise UserError(f"{model.path / 'config.json'}: plain-torch supports Llama and Mistral, not {architecture}")
        cls = getattr(transformers, architecture)
        if model.random_init:  # our own generator: the same distribution as other backends, not the same numbers
            torch.manual_seed(model.init_seed)
            self.model = cls(cls.config_class.from_pretrained(str(model.path)))
        else:
            self.model = cls.from_pretrained(str(model.path), dtype=torch.float32, attn_implementation="sdpa")
        self.model.requires_grad_(False)
        self._add_lora(config)
        self.optimizer = None
        if train:
            self.optimizer = torch.optim.AdamW(
                list(self.params.values()),
                lr=config.learning_rate_multiplier,
                betas=ADAMW_BETAS,
                eps=ADAMW_EPS,
                weight_decay=config.weight_decay,
            )
        self.model.train(train)

    def _add_lora(self, config) -> None:
        targets = resolve_target_modules(config.lora_target_modules)
        unknown = [t for t in targets if t not in PROJECTIONS]
        if unknown:
            raise UserError(f"lora_target_modules: plain-torch adapts the projections only, not {unknown}")
        layers = self.model.config.num_hidden_layers
        self.keys = Keys(config.seed, layers)
        adapted = AdapterConfig.of_run(config, None)
        self.params: dict[str, torch.nn.Parameter] = {}
        features = {}
        for path in module_paths(layers, targets):
            parent_path, attr = path.rsplit(".", 1)
            parent = self.model.get_submodule(parent_path)
            base = getattr(parent, attr)
            dropout = PortableDropout(config.lora_dropout, dropout_site(path), self.keys)
            lora = LoRALinear(base, config.lora_r, adapted.scaling, dropout)
            setattr(parent, attr, lora)
            self.params[tensor_name(path, "A")], self.params[tensor_name(path, "B")] = lora.lora_A, lora.lora_B
            features[path] = (base.in_features, base.out_features)
        self._copy_in(initial_adapter(config.seed, features, config.lora_r))

    def _copy_in(self, arrays: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(torch.from_numpy(arrays[name]))

    # ---------------------------------------------------------------- training

    def _loss_sum(self, batch) -> torch.Tensor:
        logits = self.model(
            input_ids=torch.from_numpy(batch.input_ids.astype(np.int64)),
            attention_mask=torch.from_numpy(batch.attention_mask.astype(np.int64)),
        ).logits
        labels = torch.from_numpy(batch.labels.astype(np.int64))[:, 1:]
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )

    def micro_step(self, micro):
        self.keys.set_step(micro.step, micro.micro)
        loss = self._loss_sum(micro.batch) * micro.weight
        loss.backward()
        if micro.apply_update:
            params = list(self.params.values())
            if self.config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm, foreach=True)
            for group in self.optimizer.param_groups:
                group["lr"] = micro.lr
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def eval_loss(self, batch) -> tuple[float, int]:
        with torch.no_grad(), self._eval():
            return float(self._loss_sum(batch)), batch.n_targets

    def logits(self, batch) -> np.ndarray:
        with torch.no_grad(), self._eval():
            out = self.model(
                input_ids=torch.from_numpy(batch.input_ids.astype(np.int64)),
                attention_mask=torch.from_numpy(batch.attention_mask.astype(np.int64)),
            )
        return out.logits.float().numpy()

    def generate(self, prompt_ids, *, max_new_tokens, temperature=0.0, top_p=1.0, seed=0, stop_ids=()):
        """No KV cache: the whole sequence again for every token (fine for a test plugin)."""
        generator = torch.Generator().manual_seed(seed)
        ids, new = list(prompt_ids), []
        with torch.no_grad(), self._eval():
            for _ in range(max_new_tokens):
                logits = self.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
                if temperature <= 0:
                    token = int(torch.argmax(logits))
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    ordered, order = torch.sort(probs, descending=True)
                    ordered[torch.cumsum(ordered, 0) - ordered >= top_p] = 0
                    token = int(order[torch.multinomial(ordered, 1, generator=generator)])
                new.append(token)
                if token in stop_ids:
                    break
                ids.append(token)
        return new

    def _eval(self):
        model = self.model

        class Mode:
            def __enter__(self):
                self.was = model.training
                model.eval()

            def __exit__(self, *exc):
                model.train(self.was)

        return Mode()

    # ---------------------------------------------------------------- files

    def save_adapter(self, directory: Path) -> None:
        arrays = {name: p.detach().numpy() for name, p in self.params.items()}
        write_adapter(Path(directory), AdapterConfig.of_run(self.config, self.source.name), arrays)

    def load_adapter(self, directory: Path) -> None:
        check_matches_run(read_adapter_config(Path(directory)), self.config, Path(directory))
        shapes = {name: tuple(p.shape) for name, p in self.params.items()}
        self._copy_in(read_adapter_weights(Path(directory), shapes))

    def save_state(self, directory: Path) -> None:
        step, exp_avg, exp_avg_sq = 0, {}, {}
        for name, param in self.params.items():
            state = self.optimizer.state.get(param) or {}
            step = int(state["step"]) if state else step
            exp_avg[name] = state["exp_avg"].numpy() if state else np.zeros(tuple(param.shape), np.float32)
            exp_avg_sq[name] = state["exp_avg_sq"].numpy() if state else np.zeros(tuple(param.shape), np.float32)
        write_optimizer_state(
            Path(directory),
            AdamWState(step, exp_avg, exp_avg_sq),
            weight_decay=self.config.weight_decay,
            extra={"backend": self.name},
        )

    def load_state(self, directory: Path) -> None:
        state = read_optimizer_state(Path(directory), {name: tuple(p.shape) for name, p in self.params.items()})
        if state.step == 0:
            return
        saved = {
            index: {
                "step": torch.tensor(float(state.step)),
                "exp_avg": torch.from_numpy(state.exp_avg[name]),
                "exp_avg_sq": torch.from_numpy(state.exp_avg_sq[name]),
            }
            for index, name in enumerate(self.params)
        }
        self.optimizer.load_state_dict({"state": saved, "param_groups": self.optimizer.state_dict()["param_groups"]})

    def describe(self) -> dict[str, Any]:
        params = list(self.model.parameters())
        return {
            "framework": f"torch {torch.__version__} (plain, no peft)",
            "device": "cpu",
            "precision": "fp32",
            "params_total": sum(p.numel() for p in params),
            "params_trainable": sum(p.numel() for p in params if p.requires_grad),
        }

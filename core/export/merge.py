"""Fold a LoRA adapter into its base: W' = W + scale * B @ A for every targeted linear layer.

The plan is generic over module paths: an adapter module ``<path>`` (from the PEFT key
``base_model.model.<path>.lora_A.weight``) merges into the base tensor ``<path>.weight``,
whatever the family (Llama's ``self_attn.q_proj``, Phi-3's fused ``qkv_proj`` and
``gate_up_proj``: a fused module's LoRA is a LoRA on the fused matrix, so the same sum holds).
The one special case is a LoRA on ``lm_head`` of a model whose lm_head is tied to the
embeddings: the merged lm_head is written as its own tensor and ``tie_word_embeddings`` set to
false, because the embedding lookup must stay unchanged.

Everything is computed in float32, one block of rows at a time (``BLOCK_BYTES``), and written
straight into the output shards, so memory stays bounded whatever the model size.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loraswitch.core.errors import UserError
from loraswitch.core.export.adapter_source import LoraAdapter
from loraswitch.core.export.shards import DEFAULT_MAX_SHARD_BYTES, OutTensor, ShardWriter
from loraswitch.core.export.tensors import (
    DTYPE_NAMES,
    FLOAT_DTYPES,
    TORCH_DTYPE_NAMES,
    SafetensorsDir,
    from_float32,
    row_blocks,
    to_float32,
)
from loraswitch.core.files.json_file import read_json_object

BLOCK_BYTES = 64 << 20  # float32 bytes merged at once
EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
# copied beside the weights when the base has them (tokenizer, chat template, generation defaults)
SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
PROVENANCE_FILE = "loraswitch_merge.json"


@dataclass(frozen=True)
class Planned:
    name: str  # output tensor name
    source: str  # the base tensor it starts from
    lora: str | None  # the adapter module whose scale * B @ A is added


class MergePlan:
    """Which base tensor each output tensor starts from and which LoRA is added to it, every
    shape checked before anything is written."""

    def __init__(self, base_dir: Path, adapter: LoraAdapter | None, dtype: str | None = None):
        if dtype is not None and dtype not in DTYPE_NAMES:
            raise UserError(f"--dtype {dtype}: unknown; choose one of {', '.join(DTYPE_NAMES)}")
        self.base_dir = Path(base_dir)
        self.config = read_json_object(self.base_dir / "config.json", if_missing="a model directory needs config.json")
        self.base = SafetensorsDir(self.base_dir)
        self.adapter = adapter
        self.dtype = DTYPE_NAMES[dtype] if dtype else None
        self.untied = False
        targets = self._targets()
        self.tensors = [Planned(name, name, targets.get(name)) for name in self.base.entries]
        if self.untied and LM_HEAD not in self.base.entries:
            self.tensors.append(Planned(LM_HEAD, EMBED, targets[LM_HEAD]))

    def _targets(self) -> dict[str, str]:
        """Output tensor name -> adapter module, for every module of the adapter."""
        if self.adapter is None:
            return {}
        targets = {}
        for module, (a, b) in self.adapter.modules.items():
            weight = f"{module}.weight"
            if weight == LM_HEAD and self._tied():
                self.untied = True  # the embeddings stay as they are; lm_head becomes its own tensor
                source = LM_HEAD if LM_HEAD in self.base.entries else EMBED
            elif weight in self.base.entries:
                source = weight
            else:
                raise UserError(
                    f"{self.adapter.weights_file}: LoRA module {module!r} has no base tensor {weight!r} in {self.base_dir}; "
                    "the adapter was trained on another model"
                )
            self._check_fit(module, source, a, b)
            targets[weight] = module
        return targets

    def _tied(self) -> bool:
        """lm_head shares the embedding matrix: the config says so, or (no key) the weights have no lm_head."""
        tied = self.config.get("tie_word_embeddings", LM_HEAD not in self.base.entries)
        return bool(tied) and EMBED in self.base.entries

    def _check_fit(self, module: str, source: str, a: np.ndarray, b: np.ndarray) -> None:
        e = self.base.entries[source]
        if len(e.shape) != 2 or e.dtype not in FLOAT_DTYPES or (b.shape[0], a.shape[1]) != e.shape:
            assert self.adapter is not None
            raise UserError(
                f"{self.adapter.weights_file}: LoRA {module!r} (lora_B {list(b.shape)} x lora_A {list(a.shape)}) "
                f"does not fit base tensor {source!r} {e.dtype} {list(e.shape)}; the adapter was trained on another model"
            )

    # ------------------------------------------------------------ output description

    def out_dtype(self, p: Planned) -> str:
        stored = self.base.entries[p.source].dtype
        return self.dtype if self.dtype and stored in FLOAT_DTYPES else stored

    def out_tensors(self) -> list[OutTensor]:
        return [OutTensor(p.name, self.out_dtype(p), self.base.entries[p.source].shape) for p in self.tensors]

    def out_config(self) -> dict[str, Any]:
        config = dict(self.config)
        if self.untied:
            config["tie_word_embeddings"] = False
        if self.dtype:
            keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
            for key in keys:
                config[key] = TORCH_DTYPE_NAMES[self.dtype]
        return config

    # ------------------------------------------------------------ data

    def delta(self, p: Planned, start: int, stop: int) -> np.ndarray | None:
        """scale * B[start:stop] @ A for a planned tensor with a LoRA, else None."""
        if p.lora is None or self.adapter is None:
            return None
        a, b = self.adapter.modules[p.lora]
        return np.float32(self.adapter.scale) * (b[start:stop] @ a)

    def blocks(self, p: Planned, out_dtype: str | None = None) -> Iterator[np.ndarray]:
        """The output tensor as consecutive row blocks, in the storage of ``out_dtype``."""
        e = self.base.entries[p.source]
        out = out_dtype or self.out_dtype(p)
        rows = e.shape[0] if e.shape else 1
        row_bytes = 4 * (e.n_elements // max(rows, 1))
        for start, stop in row_blocks(rows, row_bytes, BLOCK_BYTES):
            data = self.base.rows(p.source, start, stop)
            if p.lora is None and out == e.dtype:
                yield data  # copied as stored, bit for bit
                continue
            w = to_float32(data, e.dtype)
            d = self.delta(p, start, stop)
            yield from_float32(w if d is None else w + d, out)

    def float32(self, p: Planned) -> np.ndarray:
        """The whole output tensor in float32 (for exporters that need it at once)."""
        e = self.base.entries[p.source]
        out = np.empty(e.shape, np.float32)
        start = 0
        for block in self.blocks(p, "F32"):
            out.reshape(-1)[start : start + block.size] = block.reshape(-1)
            start += block.size
        return out


def write_merged_dir(plan: MergePlan, out_dir: Path, provenance: dict[str, Any], max_shard_bytes: int) -> None:
    """Fill ``out_dir`` (an empty directory): weights, config, tokenizer and side files."""
    writer = ShardWriter(out_dir, plan.out_tensors(), max_shard_bytes)
    try:
        for p in plan.tensors:
            writer.write(p.name, plan.blocks(p))
        writer.close()
    finally:
        writer.abort()
    (out_dir / "config.json").write_text(json.dumps(plan.out_config(), indent=2) + "\n")
    for name in SIDE_FILES:
        if (plan.base_dir / name).is_file():
            shutil.copyfile(plan.base_dir / name, out_dir / name)
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")


def merge_model(
    base_dir: Path,
    adapter: LoraAdapter,
    out_dir: Path,
    *,
    dtype: str | None = None,
    provenance: dict[str, Any] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> MergePlan:
    """Merge ``adapter`` into the base in ``base_dir`` and write the model to ``out_dir``."""
    plan = MergePlan(base_dir, adapter, dtype)
    write_merged_model(plan, out_dir, provenance=provenance, max_shard_bytes=max_shard_bytes)
    return plan


def write_merged_model(
    plan: MergePlan,
    out_dir: Path,
    *,
    provenance: dict[str, Any] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> None:
    """Write a planned merge to ``out_dir`` (which must not exist, or is replaced as a whole once
    the new directory is complete; the caller checks --overwrite)."""
    from loraswitch.core.export.outputs import write_directory

    adapter = plan.adapter
    assert adapter is not None
    record = {
        "adapter": str(adapter.directory),
        "scale": adapter.scale,
        "r": adapter.r,
        "lora_alpha": adapter.alpha,
        "use_rslora": adapter.use_rslora,
        "merged_modules": sorted(adapter.modules),
        "dtype": plan.dtype or "as stored",
        **(provenance or {}),
    }
    write_directory(Path(out_dir), lambda tmp: write_merged_dir(plan, tmp, record, max_shard_bytes))

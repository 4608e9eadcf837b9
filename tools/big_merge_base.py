"""Write a random base model of a named shape (bf16, sharded) and a LoRA adapter for it, to
measure `loraswitch merge` on a large model (docs/export.md, "Memory").

    python tools/big_merge_base.py llama-8b /data/big        # ~16 GB of bf16 weights + adapter
    /usr/bin/time -v loraswitch merge --adapter /data/big/adapter --model /data/big/base --out /data/big/merged

The weights are written one tensor at a time through the same shard writer the merge uses, so
this script itself stays small in memory. Values are random bf16 of the usual init scale; the
adapter targets every linear layer with r = 16 and a random non-zero B.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from loraswitch.core.export.shards import OutTensor, ShardWriter
from loraswitch.core.models.byte_tokenizer import write_byte_tokenizer
from loraswitch.core.models.shapes import shape_config, tensor_shapes

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ROWS_PER_BLOCK = 1024


def random_bf16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random bf16 bit patterns of magnitude 2**-8 .. 2**-5 with a random sign (fast: no floats)."""
    bits = rng.integers(0x3B80, 0x3D00, size=n, dtype=np.uint16)
    return bits | (rng.integers(0, 2, size=n, dtype=np.uint16) << 15)


def write_base(directory: Path, shape: str) -> dict:
    config = shape_config(shape)
    directory.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(config)
    writer = ShardWriter(directory, [OutTensor(n, "BF16", s) for n, s in shapes.items()])
    rng = np.random.default_rng(0)
    for name, s in shapes.items():
        row = int(np.prod(s[1:])) if len(s) > 1 else 1

        def blocks(name=name, s=s, row=row):
            if name.endswith("norm.weight"):
                yield np.full(s, 0x3F80, np.uint16)  # 1.0
                return
            for start in range(0, s[0], ROWS_PER_BLOCK):
                yield random_bf16(rng, (min(s[0], start + ROWS_PER_BLOCK) - start) * row)

        writer.write(name, blocks())
    writer.close()
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    write_byte_tokenizer(directory)
    return config


def write_adapter(directory: Path, config: dict, r: int = 16) -> None:
    from safetensors.numpy import save_file

    shapes = tensor_shapes(config)
    rng = np.random.default_rng(1)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for name in LINEAR:
            parent = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            path = f"model.layers.{layer}.{parent}.{name}"
            out, n_in = shapes[path + ".weight"]
            tensors[f"base_model.model.{path}.lora_A.weight"] = rng.normal(0, 0.01, (r, n_in)).astype(np.float32)
            tensors[f"base_model.model.{path}.lora_B.weight"] = rng.normal(0, 0.01, (out, r)).astype(np.float32)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    adapter_config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(LINEAR)}
    (directory / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))


if __name__ == "__main__":
    shape, root = sys.argv[1], Path(sys.argv[2])
    cfg = write_base(root / "base", shape)
    write_adapter(root / "adapter", cfg)
    print(f"wrote {root / 'base'} and {root / 'adapter'}")

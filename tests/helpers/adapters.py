"""A PEFT adapter with random A *and* B for a model directory, written with the core's PEFT format.

A fresh LoRA has B = 0, which hides the LoRA path (and its dropout) from logits and gradients;
tests that check the LoRA arithmetic load this instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from loraswitch.core.adapters.modules import module_paths
from loraswitch.core.adapters.peft_format import AdapterConfig, expected_shapes, write_adapter
from loraswitch.core.models.families import spec_from_config


def model_features(model_dir: Path) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear of the model's block (its family's: Phi-3's fused qkv_proj...)."""
    path = Path(model_dir) / "config.json"
    return spec_from_config(json.loads(path.read_text()), path).linear_dims()


def write_random_adapter(
    directory: Path,
    model_dir: Path,
    *,
    r: int,
    alpha: float,
    seed: int,
    use_rslora: bool = False,
    b_scale: float = 1.0,
) -> Path:
    """Every linear of every layer: A ~ U(-0.3, 0.3), B ~ N(0, 0.05) times ``b_scale``."""
    features = model_features(model_dir)
    layers = json.loads((Path(model_dir) / "config.json").read_text())["num_hidden_layers"]
    modules = {path: features[path.rsplit(".", 1)[1]] for path in module_paths(layers, list(features))}
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in expected_shapes(modules, r).items():
        draw = rng.uniform(-0.3, 0.3, shape) if ".lora_A." in name else rng.normal(0, 0.05, shape) * b_scale
        tensors[name] = draw.astype(np.float32)
    config = AdapterConfig(
        r=r,
        lora_alpha=alpha,
        use_rslora=use_rslora,
        target_modules=sorted(features),
        base_model_name_or_path=str(model_dir),
    )
    write_adapter(Path(directory), config, tensors)
    return Path(directory)

"""Random-weight model directories: what ``random:<shape>`` resolves to.

Both backends load the very same files, which is why torch and JAX runs on ``random:tiny`` start
from identical weights and can be compared number for number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from loraswitch.core.models import families
from loraswitch.core.models.byte_tokenizer import CHATML_TEMPLATE, write_byte_tokenizer
from loraswitch.core.models.shapes import shape_config

INIT_STD = 0.02  # the usual Llama initializer_range


def random_weights(config: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """fp32 weights under HF names: N(0, 0.02) matrices and biases, RMSNorm scales of one.
    Each tensor draws from its own stream (seed, index) so adding a tensor never shifts the others."""
    out = {}
    spec = families.spec_from_config(config, Path("config.json"))
    for i, (name, shape) in enumerate(spec.tensor_shapes().items()):
        if name.endswith("norm.weight"):  # a scale of one (Gemma stores it as 0: it scales by 1 + weight)
            out[name] = np.full(shape, spec.norm_init, np.float32)
        else:
            rng = np.random.default_rng([seed, i])
            out[name] = (rng.standard_normal(shape, dtype=np.float32) * INIT_STD).astype(np.float32)
    return out


def write_random_model(
    directory: str | Path, shape: str | dict[str, Any] = "tiny", seed: int = 0, with_weights: bool = True
) -> Path:
    """Write config.json, the byte tokenizer with the family's chat template (ChatML for Llama
    shapes) and (if ``with_weights``) model.safetensors (fp32). ``shape`` is a name from
    ``core.shapes`` or a config dict. Returns the directory."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = shape_config(shape) if isinstance(shape, str) else dict(shape)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": config["bos_token_id"],
                "eos_token_id": config["eos_token_id"],
                "pad_token_id": config.get("pad_token_id"),
            },
            indent=2,
        )
        + "\n"
    )
    family = families.family_of(config, directory / "config.json")
    template = families.chat_template(family.chat_template) if family.chat_template else CHATML_TEMPLATE
    write_byte_tokenizer(directory, template, family.special_tokens)
    if with_weights:
        save_file(random_weights(config, seed), str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory

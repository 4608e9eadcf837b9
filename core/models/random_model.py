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
from loraswitch.core.models.random_values import numpy_values
from loraswitch.core.models.shapes import shape_config, tensor_shapes


def random_weights(config: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """fp32 weights under HF names, as ``random_values`` defines them: the very numbers every
    backend draws on its devices for the same shape and seed (``ModelSource.random_init``)."""
    return {name: numpy_values(seed, name, shape) for name, shape in tensor_shapes(config).items()}


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

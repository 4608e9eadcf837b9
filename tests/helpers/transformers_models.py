"""Tiny model directories written by transformers itself: its config class + ``save_pretrained``,
then the byte tokenizer with the family's real chat template. Shared by the parity, chat-template
and CLI tests of the non-Llama families.

transformers initialises biases to zero and norm scales to one, which would hide a missing bias
or q/k norm; every such tensor is redrawn here (seeded), so each one changes the logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraswitch.core.models import families
from loraswitch.core.models.byte_tokenizer import write_byte_tokenizer
from loraswitch.core.models.shapes import BOS_ID, EOS_ID, PAD_ID

TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=PAD_ID,
)


def write_transformers_model(directory: Path, architecture: str, *, seed: int, **overrides: Any) -> Path:
    """``architecture``'s model at the TINY shape (``overrides`` change its config), random
    weights from ``seed``, saved as safetensors with a byte tokenizer and the family's template."""
    import torch
    import transformers

    model_class = getattr(transformers, architecture)
    config = model_class.config_class(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = model_class(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.2 * noise)
            elif name.endswith(".bias"):
                param.copy_(0.1 * noise)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    family = families.family_of({"architectures": [architecture]}, directory / "config.json")
    template = families.chat_template(family.chat_template) if family.chat_template else None
    write_byte_tokenizer(directory, *([template] if template else []), extra_specials=family.special_tokens)
    return directory

"""A tiny real tokenizer for data tests: byte-level BPE with a few merges, ChatML specials
and SmolLM2's chat template, written as a Hugging Face model directory would hold it."""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# A few merges so tokens span several characters, including across the role header
# ("assistant\n" and "\nHello" can merge differently when tokenised alone).
MERGES = [
    ("Ċ", "H"),
    ("h", "e"),
    ("Ġ", "t"),
    ("Ġt", "he"),
    ("a", "s"),
    ("s", "i"),
    ("as", "si"),
    ("l", "l"),
    ("e", "ll"),
    ("H", "ell"),
    ("Hell", "o"),
    ("n", "t"),
]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in MERGES:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok


def write_model_dir(
    path: Path,
    *,
    template: str | None = CHATML_TEMPLATE,
    eos: object = "<|im_end|>",
    pad: object = None,
    bos: object = None,
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(path / "tokenizer.json"))
    cfg: dict = {"eos_token": eos}
    if template is not None:
        cfg["chat_template"] = template
    if pad is not None:
        cfg["pad_token"] = pad
    if bos is not None:
        cfg["bos_token"] = bos
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return path

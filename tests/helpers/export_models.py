"""Tiny Hugging Face models and PEFT adapters for the merge and export tests.

Models are written by transformers itself (the family's config class + ``save_pretrained``),
with random RMSNorm scales so a norm mapped to the wrong place shows in the logits, and a small
byte-level BPE tokenizer whose pre-tokenizer matches the family's real one. Adapters are made by
peft (``get_peft_model`` + ``save_pretrained``) with a random, non-zero lora_B.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VOCAB = 320  # the model vocabulary: the tokenizer has 268 tokens (256 bytes, 9 merges, 3 specials)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("Ġ", "s"), ("o", "n"), ("1", "2")]
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# family -> (transformers config class, model class, pre-tokenizer of its real tokenizers, extra config)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", "smollm", {}),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", "llama3", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", "gpt2", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "qwen2", {}),
    # transformers reads a qwen3 GGUF's head size from its default (128), not from the file
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "qwen2", {"head_dim": 128}),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        "gpt2",
        {"head_dim": 16, "sliding_window": 8, "query_pre_attn_scalar": 16},
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        "gpt2",
        {"head_dim": 16, "sliding_window": 8, "query_pre_attn_scalar": 16},
    ),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", "gpt2", {}),
}
PHI3_LINEAR = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]  # Phi-3's fused block


def write_bpe_tokenizer(directory: Path, pre: str = "smollm") -> None:
    """tokenizer.json (byte-level BPE, a few merges, ChatML specials) and tokenizer_config.json."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    from loraswitch.core.models.byte_tokenizer import _bytes_to_unicode

    chars = _bytes_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    for a, b in MERGES:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    no_regex = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.pre_tokenizer = {
        "gpt2": byte_level,
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]),
        "llama3": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"), no_regex]),
        "qwen2": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), "isolated"), no_regex]),
    }[pre]
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_tiny_model(
    directory: Path, family: str = "llama", *, tied: bool = False, seed: int = 0, dtype: str = "float32", **config
) -> Path:
    """A 2-layer model of ``family`` saved by transformers, with its tokenizer."""
    import torch
    import transformers

    config_class, model_class, pre, extra = FAMILIES[family]
    values = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        bos_token_id=266,
        eos_token_id=267,
        pad_token_id=265,
        **extra,
    )
    values.update(config)
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**values))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif p.ndim == 1:  # biases (Qwen2's q/k/v)
                p.normal_(0, 0.1)
    directory.mkdir(parents=True, exist_ok=True)
    model.to(getattr(torch, dtype)).save_pretrained(directory)
    write_bpe_tokenizer(directory, pre)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": 267, "max_new_tokens": 7}))
    return directory


def _all_linear(base_dir: Path) -> list[str]:
    config = json.loads((Path(base_dir) / "config.json").read_text())
    return PHI3_LINEAR if config["architectures"] == ["Phi3ForCausalLM"] else ALL_LINEAR


def write_adapter(
    base_dir: Path, out: Path, *, targets=None, r: int = 4, alpha: float = 8, rslora: bool = False, seed: int = 1
) -> Path:
    """A peft LoRA adapter for the model in ``base_dir`` with random lora_A and lora_B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=targets or _all_linear(base_dir), use_rslora=rslora, lora_dropout=0.0
    )
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    model.save_pretrained(out, save_embedding_layers=False)
    readme = out / "README.md"
    if readme.exists():
        readme.unlink()
    return out


def token_ids(n: int = 2, length: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 259, size=(n, length))


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.float().numpy()


def load_hf(directory: Path, **kw):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kw).eval()


def peft_logits(base_dir: Path, adapter_dir: Path, ids: np.ndarray) -> np.ndarray:
    from peft import PeftModel

    return hf_logits(PeftModel.from_pretrained(load_hf(base_dir), adapter_dir).eval(), ids)


# family -> how its real tokenizer.model is set up: (transformers tokenizer class, add_dummy_prefix,
# unk/bos/eos/pad ids). Llama 2, Mistral and Phi-3 prepend "▁" and number unk 0, bos 1, eos 2; Gemma
# does not prepend and numbers pad 0, eos 1, bos 2, unk 3.
SENTENCEPIECE = {
    "llama": ("LlamaTokenizer", True, dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)),
    "phi3": ("LlamaTokenizer", True, dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)),
    "gemma3": (
        "GemmaTokenizer",
        False,
        dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>"),
    ),
}
SPM_WORDS = "the quick brown fox jumps over lazy dog model token export llama gemma piece byte score naïve café".split()
SPM_ADDED = ["<start_of_turn>", "<end_of_turn>"]  # special added tokens past the SentencePiece vocabulary


def train_sentencepiece(add_dummy_prefix: bool, ids: dict, vocab_size: int = 400) -> bytes:
    """A byte-fallback BPE SentencePiece model (what Llama 2 and Gemma use) on generated text."""
    import io
    import random

    import sentencepiece

    rng = random.Random(0)
    lines = [
        " ".join(rng.choice(SPM_WORDS) for _ in range(rng.randint(3, 12))) + f" {rng.randint(0, 9999)}"
        for _ in range(400)
    ]
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=add_dummy_prefix,
        minloglevel=2,
        **ids,
    )
    return out.getvalue()


def write_sentencepiece_model(directory: Path, family: str) -> Path:
    """A tiny ``family`` model whose tokenizer is SentencePiece: tokenizer.model plus the tokenizer.json
    and tokenizer_config.json transformers converts it to, with two added special tokens."""
    import transformers

    tokenizer_class, dummy_prefix, ids = SENTENCEPIECE[family]
    proto = train_sentencepiece(dummy_prefix, ids)
    n_pieces = 400
    write_tiny_model(
        directory,
        family,
        vocab_size=n_pieces + 16,  # room for the added tokens and [PAD<id>] rows, as real checkpoints have
        bos_token_id=ids["bos_id"],
        eos_token_id=ids["eos_id"],
        pad_token_id=ids["pad_id"] if ids["pad_id"] >= 0 else None,
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).unlink()
    (directory / "tokenizer.model").write_bytes(proto)
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class}))
    # both families' real tokenizer_config.json say so; transformers would not write it
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, add_bos_token=True, add_eos_token=False)
    tokenizer.add_special_tokens({"additional_special_tokens": SPM_ADDED})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory

"""A byte-level tokenizer for ``random:<shape>`` models, so any UTF-8 text trains without a download.

Ids 0-255 are the bytes (through GPT-2's byte-to-unicode map, so the ``tokenizers`` ByteLevel
pre-tokenizer and decoder round-trip every string), then three specials, then a family's own
turn markers (Gemma's ``<start_of_turn>``/``<end_of_turn>``, Phi-3's ``<|user|>``...) from 259,
so its template's end-of-turn marker is one token, a stop id and a target, as on the real model. The chat template is
ChatML, the same as SmolLM2's, so data and prompts look alike on random and real models.
"""

from __future__ import annotations

import json
from pathlib import Path

from loraswitch.core.models.shapes import BOS_ID, EOS_ID, PAD_ID

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # ids 256, 257, 258

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_byte_tokenizer(extra_specials: tuple[str, ...] = ()):
    """A ``tokenizers.Tokenizer``: BPE without merges over the 256 byte symbols, plus specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    # use_regex=False: the regex split only matters for merges, and there are none.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    assert ids == [BOS_ID, 257, EOS_ID] and PAD_ID == ids[0], ids
    if extra_specials:
        tok.add_special_tokens(list(extra_specials))
    return tok


def write_byte_tokenizer(
    directory: str | Path, chat_template: str = CHATML_TEMPLATE, extra_specials: tuple[str, ...] = ()
) -> None:
    """Write tokenizer.json and tokenizer_config.json (chat template, eos/pad) into ``directory``.
    The specials are Qwen's too, so a Qwen family's own template (ChatML) works unchanged."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_byte_tokenizer(extra_specials).save(str(directory / "tokenizer.json"))
    config = tokenizer_config(chat_template, extra_specials)
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def tokenizer_config(chat_template: str = CHATML_TEMPLATE, extra_specials: tuple[str, ...] = ()) -> dict:
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in enumerate(SPECIAL_TOKENS + tuple(extra_specials), start=256)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": [IM_START, IM_END, *extra_specials],
        "bos_token": ENDOFTEXT,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": chat_template,
    }


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the one ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}

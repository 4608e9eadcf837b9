"""tokenizer.json -> GGUF tokenizer metadata (llama.cpp's byte-level BPE, ``gpt2``).

``add_tokenizer`` picks the path: a byte-level BPE tokenizer.json is written here; otherwise the
model's SentencePiece ``tokenizer.model`` is (``gguf_spm_vocab.py``, llama.cpp's ``llama``), as
llama.cpp's converter does. A SentencePiece-style tokenizer.json without its tokenizer.model is
refused: its scores cannot be recovered from tokenizer.json without guessing.

Special token ids, merges, add_bos/add_eos and the chat template are read by the gguf
package's own ``SpecialVocab``, as llama.cpp's converter does. The token list and types are
built here because the package's ``BpeVocab`` marks every added token CONTROL and drops added
tokens that are also in the base vocabulary (SmolLM2's specials are), which would lose their
control type; the rule used instead is convert_hf_to_gguf.py's: an added special token is
CONTROL, an added ordinary token USER_DEFINED, ids past the tokenizer up to the model's
vocab_size are ``[PAD<id>]`` UNUSED.

llama.cpp does not run the tokenizer.json pre-tokenizer; it picks a built-in one by name
(``tokenizer.ggml.pre``). ``PRE_TOKENIZERS`` maps the pre-tokenizer structures loraswitch
knows to those names; anything else is refused rather than written with a guess, since a wrong
pre-tokenizer silently changes how text is split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import read_json_object

LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# pre-tokenizer structure (see _describe) -> llama.cpp's name for it
PRE_TOKENIZERS = {
    ("ByteLevel+regex",): "gpt-2",
    ("Digits/individual", "ByteLevel+regex"): "smollm",
    ("Split:" + LLAMA3_REGEX, "ByteLevel"): "llama-bpe",
    ("Split:" + QWEN2_REGEX, "ByteLevel"): "qwen2",
}
TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 5, 3, 4


def _describe(pre: dict[str, Any] | None) -> tuple[str, ...]:
    """A pre-tokenizer as a tuple of steps, e.g. ('Digits/individual', 'ByteLevel+regex')."""
    if not pre:
        return ()
    if pre.get("type") == "Sequence":
        return tuple(step for p in pre.get("pretokenizers", []) for step in _describe(p))
    kind = pre.get("type")
    if kind == "ByteLevel":
        return ("ByteLevel+regex" if pre.get("use_regex", True) else "ByteLevel",)
    if kind == "Digits":
        return ("Digits/individual" if pre.get("individual_digits") else "Digits",)
    if kind == "Split":
        pattern = pre.get("pattern", {})
        return (f"Split:{pattern.get('Regex', pattern.get('String'))}",)
    return (str(kind),)


def pre_tokenizer_name(tokenizer: dict[str, Any], path: Path) -> str:
    steps = _describe(tokenizer.get("pre_tokenizer"))
    if not tokenizer["model"].get("merges") and steps in (("ByteLevel",), ("ByteLevel+regex",)):
        return "gpt-2"  # no merges (a byte tokenizer): every byte is its own token whatever the split
    if steps not in PRE_TOKENIZERS:
        raise UserError(
            f"{path}: pre-tokenizer {' + '.join(steps) or 'none'} has no llama.cpp equivalent loraswitch knows "
            f"(known: {', '.join(PRE_TOKENIZERS.values())})"
        )
    return PRE_TOKENIZERS[steps]


def read_tokenizer_json(model_dir: Path) -> dict[str, Any]:
    return read_json_object(model_dir / "tokenizer.json", if_missing="GGUF export needs the model's tokenizer.json")


def is_byte_level_bpe(tokenizer: dict[str, Any]) -> bool:
    model = tokenizer.get("model") or {}
    decoder = tokenizer.get("decoder") or {}
    return model.get("type") == "BPE" and not model.get("byte_fallback") and decoder.get("type") == "ByteLevel"


def looks_sentencepiece(tokenizer: dict[str, Any]) -> bool:
    """Byte-fallback BPE or Unigram, or "▁" for spaces: what transformers converts SentencePiece to."""
    model = tokenizer.get("model") or {}
    if model.get("byte_fallback") or model.get("type") == "Unigram":
        return True
    parts = json.dumps([tokenizer.get(k) for k in ("normalizer", "pre_tokenizer", "decoder")], ensure_ascii=False)
    return "\u2581" in parts


def byte_level_tokenizer(model_dir: Path) -> dict[str, Any] | None:
    """The byte-level BPE tokenizer.json (written as ``gpt2``), or None where the SentencePiece
    ``tokenizer.model`` is to be written (``llama``); anything else is refused."""
    spm = (model_dir / "tokenizer.model").is_file()
    if spm and not (model_dir / "tokenizer.json").is_file():
        return None
    path = model_dir / "tokenizer.json"
    tokenizer = read_tokenizer_json(model_dir)
    if is_byte_level_bpe(tokenizer):
        return tokenizer
    if spm:
        return None
    model = tokenizer.get("model") or {}
    kind = f"{model.get('type')} with a {(tokenizer.get('decoder') or {}).get('type')} decoder"
    if looks_sentencepiece(tokenizer):
        raise UserError(
            f"{path}: a SentencePiece tokenizer ({kind}); GGUF export needs its tokenizer.model beside it "
            "(llama.cpp takes the pieces' scores from it), and there is none"
        )
    raise UserError(
        f"{path}: only byte-level BPE (GPT-2 style: SmolLM2, Llama 3, Qwen2) and SentencePiece tokenizers "
        f"(with tokenizer.model: Llama 2, Mistral, Gemma, Phi-3) are exported to GGUF; this one is {kind}"
    )


def token_list(tokenizer: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id and their GGUF token types, padded to ``vocab_size``."""
    by_id: dict[int, tuple[str, int]] = {i: (t, TOKEN_NORMAL) for t, i in tokenizer["model"]["vocab"].items()}
    for added in tokenizer.get("added_tokens", []):
        by_id[added["id"]] = (added["content"], TOKEN_CONTROL if added.get("special") else TOKEN_USER_DEFINED)
    n = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(n):
        token, kind = by_id.get(i, (f"[PAD{i}]", TOKEN_UNUSED))
        tokens.append(token)
        types.append(kind)
    return tokens, types


def add_bpe_tokens(writer: Any, tokenizer: dict[str, Any], model_dir: Path, vocab_size: int) -> tuple[int, bool]:
    """Write tokenizer.ggml.{model,pre,tokens,token_type}; returns the token count and whether it merges."""
    import gguf

    pre = pre_tokenizer_name(tokenizer, model_dir / "tokenizer.json")
    tokens, types = token_list(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    has_merges = bool(tokenizer["model"].get("merges"))
    if not has_merges:  # llama.cpp requires the key even when there is nothing to merge
        writer.add_key_value(
            gguf.Keys.Tokenizer.MERGES, [], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.STRING
        )
    return len(tokens), has_merges


def add_tokenizer(writer: Any, model_dir: Path, vocab_size: int) -> None:
    """Write the tokenizer.ggml.* keys and the chat template into a gguf.GGUFWriter."""
    import gguf

    from loraswitch.core.export.gguf_spm_vocab import add_sentencepiece_tokens

    tokenizer = byte_level_tokenizer(model_dir)
    if tokenizer is None:  # llama.cpp's SentencePiece tokenizer has no merges
        n_tokens, has_merges = add_sentencepiece_tokens(writer, model_dir, vocab_size), False
    else:
        n_tokens, has_merges = add_bpe_tokens(writer, tokenizer, model_dir, vocab_size)
    # special ids, add_bos/add_eos and the chat template: the gguf package's reader, for both kinds
    special = gguf.SpecialVocab(model_dir, load_merges=has_merges, n_vocab=n_tokens)
    special.add_to_gguf(writer, quiet=True)

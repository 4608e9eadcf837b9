"""tokenizer.json -> GGUF tokenizer metadata (llama.cpp's byte-level BPE, ``gpt2``).

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


def read_bpe_tokenizer(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer.json"
    try:
        tokenizer = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path}: cannot read ({type(e).__name__}); GGUF export needs the model's tokenizer.json"
        ) from e
    model = tokenizer.get("model") or {}
    decoder = tokenizer.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise UserError(
            f"{path}: only byte-level BPE tokenizers (GPT-2 style: SmolLM2, Llama 3, Qwen2) are exported to GGUF; "
            f"this one is {model.get('type')} with a {decoder.get('type')} decoder"
        )
    return tokenizer


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


def add_tokenizer(writer: Any, model_dir: Path, vocab_size: int) -> None:
    """Write the tokenizer.ggml.* keys and the chat template into a gguf.GGUFWriter."""
    import gguf

    tokenizer = read_bpe_tokenizer(model_dir)
    pre = pre_tokenizer_name(tokenizer, model_dir / "tokenizer.json")
    tokens, types = token_list(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    has_merges = bool(tokenizer["model"].get("merges"))
    special = gguf.SpecialVocab(model_dir, load_merges=has_merges, n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)
    if not has_merges:  # llama.cpp requires the key even when there is nothing to merge
        writer.add_key_value(
            gguf.Keys.Tokenizer.MERGES, [], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.STRING
        )

"""tokenizer.model -> GGUF tokenizer metadata (llama.cpp's SentencePiece tokenizer, ``llama``).

Llama 2, Mistral v0.1-v0.3, Gemma 2/3 and Phi-3 tokenize with SentencePiece. llama.cpp runs the
SentencePiece algorithm itself from the pieces, their scores and types, so those come from the
model's own ``tokenizer.model`` (a SentencePiece ModelProto, read with the ``sentencepiece``
package), never from tokenizer.json: the scores there are the merge ranks a converter derived, and
guessing them would silently change tokenization. The rules are convert_hf_to_gguf.py's
(``_create_vocab_sentencepiece``, Phi-3's ``set_vocab``): ids past the SentencePiece vocabulary up
to the model's vocab_size are ``[PAD<id>]`` UNUSED with score -10000; added tokens (added_tokens.json,
tokenizer_config.json's added_tokens_decoder, tokenizer.json's added_tokens) replace the piece at
their id with score -1000, CONTROL when special or when it looks special (``<|...|>``,
``<unused..>``: the converter's ``does_token_look_special``, for checkpoints that mislabel them),
USER_DEFINED otherwise, with "▁" written as a space as llama.cpp matches user-defined text raw.

``add_space_prefix`` is written from the model's normalizer (does it prepend "▁"?), which is what
llama.cpp's converter hard-codes per family (False for Gemma, llama.cpp's default True otherwise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import read_json_object

# gguf.TokenType values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
PAD_SCORE, ADDED_SCORE = -10000.0, -1000.0


def load_sentencepiece(path: Path) -> Any:
    """The SentencePieceProcessor of ``path``; a file it cannot parse is a one-line UserError."""
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(path.read_bytes())
    except (OSError, RuntimeError) as e:
        raise UserError(f"{path}: not a SentencePiece model ({type(e).__name__}: {e})".splitlines()[0]) from e
    return processor


def _piece_type(sp: Any, i: int) -> int:
    if sp.IsUnknown(i):
        return UNKNOWN
    if sp.IsControl(i):
        return CONTROL
    if sp.IsUnused(i):
        return UNUSED
    if sp.IsByte(i):
        return BYTE
    return NORMAL


def _looks_special(token: str) -> bool:
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _added_tokens(model_dir: Path) -> list[tuple[int, str, bool]]:
    """(id, content, special) of every added token, in the order llama.cpp's converters apply them."""
    found: list[tuple[int, str, bool]] = []
    for name in ("added_tokens.json", "tokenizer_config.json", "tokenizer.json"):
        path = model_dir / name
        if not path.is_file():
            continue
        data = read_json_object(path)
        if name == "added_tokens.json":  # {content: id}, ordinary (USER_DEFINED) tokens
            found += [(int(i), str(t), False) for t, i in data.items()]
        elif name == "tokenizer_config.json":
            decoder = data.get("added_tokens_decoder") or {}
            found += [(int(i), t["content"], bool(t.get("special"))) for i, t in decoder.items()]
        else:
            found += [(int(t["id"]), t["content"], bool(t.get("special"))) for t in data.get("added_tokens") or []]
    return found


def sentencepiece_vocab(model_dir: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int], Any]:
    """Tokens (as bytes), scores and GGUF token types by id, and the SentencePieceProcessor."""
    path = model_dir / "tokenizer.model"
    sp = load_sentencepiece(path)
    if sp.vocab_size() > vocab_size:
        raise UserError(f"{path}: {sp.vocab_size()} pieces, more than the model's vocab_size {vocab_size}")
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [PAD_SCORE] * vocab_size
    types = [UNUSED] * vocab_size
    for i in range(sp.vocab_size()):
        tokens[i], scores[i], types[i] = sp.IdToPiece(i).encode("utf-8"), sp.GetScore(i), _piece_type(sp, i)
    for i, content, special in _added_tokens(model_dir):
        if not 0 <= i < vocab_size:
            raise UserError(f"{model_dir}: added token {content!r} has id {i}, outside the vocab_size {vocab_size}")
        if special or _looks_special(content):
            tokens[i], types[i] = content.encode("utf-8"), CONTROL
        else:
            tokens[i], types[i] = content.replace("\u2581", " ").encode("utf-8"), USER_DEFINED
        scores[i] = ADDED_SCORE
    return tokens, scores, types, sp


def adds_space_prefix(sp: Any) -> bool:
    """Whether the model's normalizer prepends "▁" (SentencePiece's add_dummy_prefix)."""
    return bool(sp.Normalize("a").startswith("\u2581"))


def add_sentencepiece_tokens(writer: Any, model_dir: Path, vocab_size: int) -> int:
    """Write tokenizer.ggml.{model,pre,tokens,scores,token_type,add_space_prefix}; returns the token count."""
    tokens, scores, types, sp = sentencepiece_vocab(model_dir, vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(adds_space_prefix(sp))
    return len(tokens)

"""GGUF export of SentencePiece tokenizers (llama.cpp's ``llama``), proved with readers we did not write.

Each tiny model carries a SentencePiece model trained in the test (byte-fallback BPE, as Llama 2
and Gemma use) and the tokenizer.json transformers converts it to, with two added special tokens.
The GGUF is read back by gguf.GGUFReader (pieces, scores, types against the SentencePiece model
itself) and by transformers (``gguf_file=``), whose tokenizer must give the original's ids.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers.export_models import SPM_ADDED, write_sentencepiece_model

gguf = pytest.importorskip("gguf")
sentencepiece = pytest.importorskip("sentencepiece")

from loraswitch.core.errors import UserError  # noqa: E402
from loraswitch.core.export.gguf_export import export_gguf  # noqa: E402
from loraswitch.core.export.merge import MergePlan  # noqa: E402

TEXTS = [
    "Hello the  quick brown fox",  # a double space
    "naïve café 12345 over 7",  # digits split one by one
    "über ☃ 東京 lazy dog",  # characters outside the vocabulary: byte fallback
    "<start_of_turn>user\nthe model<end_of_turn>",  # added special tokens
]
NORMAL, UNKNOWN, CONTROL, UNUSED, BYTE = 1, 2, 3, 5, 6


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """family -> (model directory, its GGUF), written once."""
    root = tmp_path_factory.mktemp("spm")
    made = {}

    def get(family: str):
        if family not in made:
            directory = write_sentencepiece_model(root / family, family)
            path = root / f"{family}.gguf"
            export_gguf(MergePlan(directory, None), path, "f32", f"tiny-{family}")
            made[family] = (directory, path)
        return made[family]

    return get


def sp_type(sp, i: int) -> int:
    for test, kind in ((sp.IsUnknown, UNKNOWN), (sp.IsControl, CONTROL), (sp.IsUnused, UNUSED), (sp.IsByte, BYTE)):
        if test(i):
            return kind
    return NORMAL


@pytest.mark.parametrize("family", ["llama", "gemma3", "phi3"])
def test_gguf_reader_sees_the_sentencepiece_model(exported, family):
    directory, path = exported(family)
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    config = json.loads((directory / "config.json").read_text())
    added = {t["id"]: t["content"] for t in json.loads((directory / "tokenizer.json").read_text())["added_tokens"]}
    tokens, scores, types = (
        meta["tokenizer.ggml.tokens"],
        meta["tokenizer.ggml.scores"],
        meta["tokenizer.ggml.token_type"],
    )

    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.pre"] == "default"
    assert "tokenizer.ggml.merges" not in meta
    assert len(tokens) == len(scores) == len(types) == config["vocab_size"] > sp.vocab_size()
    kept = [i for i in range(sp.vocab_size()) if i not in added]
    assert len(kept) > 380 and sum(sp.IsByte(i) for i in kept) == 256
    assert [tokens[i] for i in kept] == [sp.IdToPiece(i) for i in kept]
    np.testing.assert_array_equal([scores[i] for i in kept], np.float32([sp.GetScore(i) for i in kept]))
    assert [types[i] for i in kept] == [sp_type(sp, i) for i in kept]
    assert set(SPM_ADDED) <= set(added.values())
    for i, content in added.items():  # added tokens replace the piece at their id, as llama.cpp's converter does
        assert (tokens[i], types[i], scores[i]) == (content, CONTROL, -1000.0)
    for i in range(max(added) + 1, config["vocab_size"]):
        assert (tokens[i], types[i], scores[i]) == (f"[PAD{i}]", UNUSED, -10000.0)
    assert meta["tokenizer.ggml.add_space_prefix"] is (family != "gemma3")
    assert meta["tokenizer.ggml.bos_token_id"] == sp.bos_id() and meta["tokenizer.ggml.eos_token_id"] == sp.eos_id()
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.chat_template"].startswith("{% for message in messages %}")


@pytest.mark.parametrize("family", ["llama", "gemma3", "phi3"])
def test_transformers_tokenizes_from_the_gguf_like_the_original(exported, family):
    from transformers import AutoTokenizer

    directory, path = exported(family)
    original = AutoTokenizer.from_pretrained(directory)
    from_gguf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    for text in TEXTS:
        want = original(text).input_ids
        assert from_gguf(text).input_ids == want, text
        assert want[0] == sp.bos_id() and len(want) > 4
    plain = TEXTS[2]
    assert original(plain, add_special_tokens=False).input_ids == sp.encode(plain)  # the original is the model
    assert any(sp.IsByte(i) for i in sp.encode(plain))


def test_sentencepiece_tokenizer_json_without_tokenizer_model_is_refused(exported, tmp_path):
    directory, _ = exported("llama")
    shutil.copytree(directory, tmp_path / "m")
    (tmp_path / "m" / "tokenizer.model").unlink()
    with pytest.raises(UserError, match=r"tokenizer.json: a SentencePiece tokenizer .* needs its tokenizer.model") as e:
        export_gguf(MergePlan(tmp_path / "m", None), tmp_path / "x.gguf", "f16", "m")
    assert "\n" not in str(e.value)
    assert not list(tmp_path.glob("*.gguf*"))

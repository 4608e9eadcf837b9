"""builtin:smollm2-135m round trip: the packaged GGUF -> our converter -> `export --format gguf`
-> our reader gives back the packaged file's metadata and (dequantised) tensors exactly."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gguf")

from loraswitch.core.export.gguf_export import export_gguf
from loraswitch.core.export.merge import MergePlan
from loraswitch.core.models.builtin import find_packaged_gguf, smollm2_cache_path
from loraswitch.core.models.gguf.reader import GGUFFile

# what llama.cpp reads to run the model; general.name and friends describe the original upload
KEYS = [
    "general.architecture",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.vocab_size",
    "llama.rope.dimension_count",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
]


def test_smollm2_converts_exports_and_reads_back_equal(smollm2_cache, tmp_path):
    original = GGUFFile(find_packaged_gguf()[0])
    export_gguf(MergePlan(smollm2_cache_path(smollm2_cache), None), tmp_path / "smollm2.gguf", "f32", "SmolLM2-135M")
    back = GGUFFile(tmp_path / "smollm2.gguf")
    for key in KEYS:
        assert back.metadata[key] == original.metadata[key], key
    assert set(back.tensors) == set(original.tensors) and len(back.tensors) == 272
    for name in original.tensors:
        assert back.tensors[name].type_name == "F32"
        np.testing.assert_array_equal(back.tensor(name), original.tensor(name), err_msg=name)

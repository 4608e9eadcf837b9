"""Convert a Llama-architecture GGUF into a Hugging Face directory both backends load.

Weights are dequantised to float32: the Q4_1 values of SmolLM2's GGUF (fp16 scale x 4-bit
code + fp16 minimum) are not exactly representable in bf16, and fp32 keeps CPU training and
the torch/JAX comparison on exactly the numbers llama.cpp would use (540 MB for 135M params).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from loraswitch.core.errors import UserError
from loraswitch.core.models.gguf.reader import GGUFFile
from loraswitch.core.models.shapes import llama_config

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED = 3, 4


def hf_name(gguf_name: str, source: Path) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")  # blk.N.attn_q.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise UserError(f"{source}: GGUF tensor {gguf_name!r} has no Hugging Face Llama equivalent")


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (convert_hf_to_gguf.py ``LlamaModel.permute``:
    reshape(n_head, 2, half, in).swapaxes(1, 2)), which turns HF's rotate-half RoPE layout
    into ggml's interleaved-pairs layout."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_config(g: GGUFFile) -> dict[str, Any]:
    m = g.metadata
    arch = m.get("general.architecture")
    if arch != "llama":
        raise UserError(
            f"{g.path}: GGUF architecture is {arch!r}; only Llama-family GGUFs (general.architecture = 'llama') are supported"
        )
    if "rope_freqs.weight" in g.tensors or "llama.rope.scaling.type" in m:
        raise UserError(f"{g.path}: GGUFs with RoPE scaling are not supported by the converter")

    def key(name: str, default: Any = None) -> Any:
        if f"llama.{name}" in m:
            return m[f"llama.{name}"]
        if default is None:
            raise UserError(f"{g.path}: GGUF metadata key 'llama.{name}' is missing")
        return default

    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    tokens = m.get("tokenizer.ggml.tokens") or []
    return llama_config(
        hidden,
        int(key("feed_forward_length")),
        int(key("block_count")),
        heads,
        int(key("attention.head_count_kv", heads)),
        int(key("vocab_size", len(tokens))),
        tied="output.weight" not in g.tensors,
        rope_theta=float(key("rope.freq_base", 10000.0)),
        dtype="float32",
        max_pos=int(key("context_length")),
        head_dim=int(key("rope.dimension_count", hidden // heads)),
        rms_norm_eps=float(np.float32(key("attention.layer_norm_rms_epsilon"))),
        bos=m.get("tokenizer.ggml.bos_token_id"),
        eos=m.get("tokenizer.ggml.eos_token_id"),
        pad=m.get("tokenizer.ggml.padding_token_id"),
    )


def hf_weights(g: GGUFFile, config: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name in g.tensors:
        w = g.tensor(name)
        if name.endswith("attn_q.weight"):
            w = unpermute_qk(w, config["num_attention_heads"])
        elif name.endswith("attn_k.weight"):
            w = unpermute_qk(w, config["num_key_value_heads"])
        out[hf_name(name, g.path)] = np.ascontiguousarray(w, dtype=np.float32)
    return out


def hf_tokenizer(g: GGUFFile):
    """Rebuild the HF byte-level BPE tokenizer from GGUF tokenizer metadata. Pre-tokenisation
    follows the GGUF's ``tokenizer.ggml.pre``: llama.cpp's 'smollm' (like 'starcoder') splits
    digits one by one, then applies GPT-2's ByteLevel regex, as SmolLM2's tokenizer.json does."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    m = g.metadata
    if m.get("tokenizer.ggml.model") != "gpt2":
        raise UserError(
            f"{g.path}: tokenizer model {m.get('tokenizer.ggml.model')!r} is not supported (only byte-level BPE, 'gpt2')"
        )
    pre = m.get("tokenizer.ggml.pre", "default")
    if pre not in ("smollm", "starcoder", "refact", "gpt-2", "default"):
        raise UserError(f"{g.path}: tokenizer pre-tokenizer {pre!r} is not supported (smollm, starcoder, gpt-2)")
    tokens = m["tokenizer.ggml.tokens"]
    types = m.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(x.split(" ", 1)) for x in m.get("tokenizer.ggml.merges", [])]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in ("smollm", "starcoder", "refact"):
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [
        AddedToken(t, special=True, normalized=False)
        for t, ty in zip(tokens, types)
        if ty in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED)
    ]
    tok.add_special_tokens(specials)
    return tok


def hf_tokenizer_config(g: GGUFFile, tok) -> dict[str, Any]:
    m = g.metadata
    tokens = m["tokenizer.ggml.tokens"]

    def token(key: str) -> str | None:
        i = m.get(f"tokenizer.ggml.{key}")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    specials = [t.content for t in tok.get_added_tokens_decoder().values()]
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "pad_token": token("padding_token_id"),
        "unk_token": token("unknown_token_id"),
        "additional_special_tokens": [
            t
            for t in specials
            if t
            not in {token("bos_token_id"), token("eos_token_id"), token("padding_token_id"), token("unknown_token_id")}
        ],
        "add_bos_token": bool(m.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(m.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(m.get("llama.context_length", 2048)),
        "chat_template": m.get("tokenizer.chat_template"),
    }


def convert_gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write config.json, generation_config.json, model.safetensors (fp32), tokenizer.json and
    tokenizer_config.json into ``out_dir``; return the config."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    g = GGUFFile(gguf_path)
    config = hf_config(g)
    tok = hf_tokenizer(g)  # before the weights: a tokenizer problem should fail fast
    save_file(hf_weights(g, config), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(hf_tokenizer_config(g, tok), indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None}
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return config

"""Tiny models and adapters shared by the merge and export tests, each written once per session."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers.export_models import PHI3_LINEAR, write_adapter, write_tiny_model


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core machine: a second thread only waits."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """family-or-variant -> a tiny base directory, written on first use."""
    root = tmp_path_factory.mktemp("bases")
    made = {}
    variants = {
        "llama": dict(family="llama"),
        "llama-tied": dict(family="llama", tied=True),
        "llama-bf16": dict(family="llama", dtype="bfloat16", seed=3),
        "llama3-scaled": dict(
            family="llama3",
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        "mistral": dict(family="mistral", seed=4),
        "qwen2": dict(family="qwen2", seed=5, tied=True),
        "qwen3": dict(family="qwen3", seed=6),
        "gemma2": dict(family="gemma2", seed=7, tied=True),
        "gemma3": dict(family="gemma3", seed=8, tied=True),
        "phi3": dict(family="phi3", seed=9),
    }

    def get(name: str):
        if name not in made:
            made[name] = write_tiny_model(root / name, **variants[name])
        return made[name]

    return get


@pytest.fixture(scope="session")
def adapters(tmp_path_factory, models):
    """(base variant, adapter variant) -> a peft adapter directory, written on first use."""
    root = tmp_path_factory.mktemp("adapters")
    made = {}
    variants = {
        "all": dict(),  # every linear of the block (Phi-3: its four fused ones)
        "rslora": dict(rslora=True, r=8, alpha=4, targets=["q_proj", "k_proj", "down_proj"]),
        "lm_head": dict(targets=["q_proj", "v_proj", "lm_head"]),
        "fused": dict(targets=PHI3_LINEAR),  # Phi-3: LoRA on the fused qkv_proj and gate_up_proj
    }

    def get(base: str, name: str = "all"):
        key = (base, name)
        if key not in made:
            made[key] = write_adapter(models(base), root / f"{base}-{name}", **variants[name])
        return made[key]

    return get

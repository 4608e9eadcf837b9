"""The jax backend's speed switches: which attention kernel packed batches take."""

from __future__ import annotations

import pytest

from loraswitch.backends.jax_flax.options import choose_options
from loraswitch.core.errors import UserError


def test_packed_attention_follows_the_attention_choice_unless_told(monkeypatch):
    monkeypatch.delenv("LORASWITCH_JAX_ATTENTION", raising=False)
    monkeypatch.delenv("LORASWITCH_JAX_PACKED_ATTENTION", raising=False)
    assert choose_options("gpu", "bf16").packed_attention == "cudnn"
    assert choose_options("gpu", "fp32").packed_attention == "xla"  # cuDNN's kernel takes no fp32
    assert choose_options("cpu", "auto").packed_attention == "xla"
    monkeypatch.setenv("LORASWITCH_JAX_PACKED_ATTENTION", "xla")
    options = choose_options("gpu", "bf16")
    assert options.attention == "cudnn" and options.packed_attention == "xla"
    monkeypatch.setenv("LORASWITCH_JAX_PACKED_ATTENTION", "flex")
    with pytest.raises(UserError, match="LORASWITCH_JAX_PACKED_ATTENTION='flex'"):
        choose_options("gpu", "bf16")

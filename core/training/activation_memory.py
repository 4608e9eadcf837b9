"""What ``gradient_checkpointing: auto`` means: recompute activations only when they would not fit.

Framework-free, so both backends decide by one rule a test can check. A backend gives the
model's config, the tokens of one micro-batch on its device, the base weights' bytes, the free
device memory and its own order of preference; the first policy whose estimated peak fits in
``BUDGET`` of the free memory wins.

The per-token, per-layer estimate of what the backward pass keeps, in values of the compute
dtype, was fitted to measured peaks (docs/memory.md; llama-1b and llama-3b on an H200, torch,
nothing recomputed: 18.6 and 40 GiB): ``off`` keeps about 16·hidden + 4·intermediate values,
``dots`` (matrix-product outputs only) about 5·hidden + 2·intermediate, ``full`` (each layer's
input) one hidden, plus one layer's ``off`` activations while that layer is recomputed.
"""

from __future__ import annotations

from typing import Any

POLICIES = ("off", "dots", "full")
BUDGET = 0.6  # of free memory: room for the allocator's fragmentation, the loss chunk, the optimizer


def _kept_per_token_layer(policy: str, hidden: int, intermediate: int) -> int:
    return {"off": 16 * hidden + 4 * intermediate, "dots": 5 * hidden + 2 * intermediate, "full": hidden}[policy]


def activation_bytes(config: dict[str, Any], tokens: int, policy: str, bytes_per_value: int) -> int:
    """Estimated activation bytes the backward pass holds for one micro-batch of ``tokens``."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kept = layers * _kept_per_token_layer(policy, h, i)
    if policy != "off":  # the layer being recomputed holds its activations for a moment
        kept += _kept_per_token_layer("off", h, i)
    return kept * tokens * bytes_per_value


def choose(
    config: dict[str, Any],
    tokens: int,
    *,
    bytes_per_value: int,
    weight_bytes: int,
    free_bytes: int,
    preference: tuple[str, ...] = POLICIES,
) -> str:
    """The first policy of ``preference`` whose weights + activations fit ``BUDGET`` of free memory;
    the last one (the leanest) when none does."""
    for policy in preference:
        if weight_bytes + activation_bytes(config, tokens, policy, bytes_per_value) <= BUDGET * free_bytes:
            return policy
    return preference[-1]


def describe(setting: str, chosen: str) -> str:
    """How the run's describe() reports it: ``dots`` or ``off (auto)``."""
    return f"{chosen} (auto)" if setting == "auto" else chosen

"""Stable '/'-joined names for the leaves of a pytree (nnx.State, optax states).

Checkpoint files store leaves under these names, so a checkpoint is checked name by name on
load instead of trusting leaf order, and the names read like the model: layers/self_attn/q_proj/lora_a.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

_VARIABLE_ATTRS = ("value", "raw_value")  # nnx.Variable's own attribute, not part of the name


def path_name(path: tuple[Any, ...]) -> str:
    parts = []
    for entry in path:
        if isinstance(entry, DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, FlattenedIndexKey):
            parts.append(str(entry.key))
        else:
            parts.append(str(entry))
    while parts and parts[-1] in _VARIABLE_ATTRS:
        parts.pop()
    return "/".join(parts)


def named_leaves(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    named = {path_name(p): leaf for p, leaf in leaves}
    if len(named) != len(leaves):
        raise ValueError("two leaves of the tree map to the same name")
    return named


def replace_leaves(tree: Any, values: dict[str, Any]) -> Any:
    """A copy of ``tree`` whose leaves are looked up by name in ``values`` (every name must be there)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: values[path_name(p)], tree)

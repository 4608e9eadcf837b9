"""Safe formats only: loraswitch loads weights, checkpoints, configs and chat templates written by
strangers, so nothing it reads may run code. The code is scanned (by syntax tree, so comments,
strings and methods such as ``model.eval()`` do not count) for the ways Python libraries run
code from files, and a real run directory is checked to hold only data formats."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("core", "backends", "plugins", "examples", "tools")


def python_files() -> list[Path]:
    return sorted(
        p for top in SCANNED for p in (REPO / top).rglob("*.py") if ".venv" not in p.parts and "build" not in p.parts
    )


def _dotted(node: ast.AST) -> str:
    """``torch.load`` for Attribute(Name('torch'), 'load'); '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _not_false(node: ast.AST | None) -> bool:
    """A keyword that is present and not the literal False (a variable might be True)."""
    return node is not None and not (isinstance(node, ast.Constant) and node.value in (False, None))


UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "yaml.SafeLoader", "yaml.CSafeLoader"}


def problems(source: str) -> list[str]:
    """Every unsafe construct in ``source``, as 'line N: what'."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> the module or module.attr it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if a.name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"line {node.lineno}: imports {a.name} (runs code when loading)")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            if node.module.split(".")[0] in UNSAFE_MODULES:
                found.append(f"line {node.lineno}: imports from {node.module} (runs code when loading)")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        full = f"{aliases.get(head, head)}.{rest}" if rest else aliases.get(head, head)
        where = f"line {node.lineno}"
        if full in ("eval", "exec", "builtins.eval", "builtins.exec", "compile", "builtins.compile"):
            found.append(f"{where}: {full}() runs strings as code")
        if full == "torch.load" and not _is_true(_keyword(node, "weights_only")):
            found.append(f"{where}: torch.load without weights_only=True unpickles arbitrary objects")
        if full == "torch.save":
            found.append(f"{where}: torch.save writes pickle; write safetensors")
        if full == "numpy.load" and _not_false(_keyword(node, "allow_pickle")):
            found.append(f"{where}: numpy.load with allow_pickle")
        if full in ("yaml.load", "yaml.load_all"):
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader) not in SAFE_YAML_LOADERS:
                found.append(f"{where}: {full} without SafeLoader constructs arbitrary objects")
        if full in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            found.append(f"{where}: {full} constructs Python objects")
        if _not_false(_keyword(node, "trust_remote_code")):
            found.append(f"{where}: trust_remote_code runs the model repository's Python code")
        if (
            name.endswith("from_pretrained")
            and not any(w in name.lower() for w in ("config", "tokenizer", "peft"))
            and not _is_true(_keyword(node, "use_safetensors"))
        ):
            found.append(f"{where}: {name} without use_safetensors=True may unpickle pytorch_model.bin")
        if full in ("jinja2.Environment", "jinja2.environment.Environment", "jinja2.Template"):
            found.append(
                f"{where}: {full} renders templates unsandboxed; use jinja2.sandbox.ImmutableSandboxedEnvironment"
            )
    return found


# ---------------------------------------------------------------- the scanner catches what it should


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.loads(b'')",
        "from pickle import loads",
        "import dill as d",
        "import torch\ntorch.load('x.pt')",
        "import torch\ntorch.load('x.pt', weights_only=False)",
        "from torch import load\nload('x.pt')",
        "import torch as t\nt.load('x.pt', map_location='cpu')",
        "import torch\ntorch.save({}, 'x.pt')",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
        "import yaml\nyaml.load(open('c.yaml'))",
        "import yaml\nyaml.load(text, Loader=yaml.Loader)",
        "import yaml\nyaml.unsafe_load(text)",
        "eval(open('f').read())",
        "exec(code)",
        "AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)",
        "AutoModelForCausalLM.from_pretrained(path)",
        "import jinja2\njinja2.Environment().from_string(t)",
    ],
)
def test_scanner_flags(snippet):
    assert problems(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('x.pt', weights_only=True)",
        "import numpy as np\nnp.load('x.npy')",
        "import yaml\nyaml.safe_load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
        "model.eval()",
        "def run_eval(): pass\nrun_eval()",
        "# never pickle: torch.load(x)\n'trust_remote_code=True'",
        "AutoConfig.from_pretrained(path)",
        "AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False)",
        "from jinja2.sandbox import ImmutableSandboxedEnvironment\nImmutableSandboxedEnvironment()",
    ],
)
def test_scanner_allows(snippet):
    assert problems(snippet) == [], snippet


# ---------------------------------------------------------------- the repository


def test_the_scan_covers_the_code():
    files = {p.relative_to(REPO).parts[0] for p in python_files()}
    assert {"core", "backends", "plugins", "examples"} <= files
    assert len(python_files()) > 40


def test_no_unsafe_loading_in_the_code():
    report = [
        f"{p.relative_to(REPO)} {line}" for p in python_files() for line in problems(p.read_text(encoding="utf-8"))
    ]
    assert report == [], "\n".join(report)


# ---------------------------------------------------------------- what a real run writes


def test_a_run_directory_holds_only_data_formats(tmp_path, monkeypatch):
    pytest.importorskip("loraswitch_numpy", reason="pip install -e examples/loraswitch-numpy")
    from safetensors import safe_open

    from loraswitch.core.config import resolve
    from loraswitch.core.plugins import reset_plugin_manager
    from loraswitch.core.training.engine import train

    for key in [k for k in os.environ if k.startswith("LORASWITCH_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LORASWITCH_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}-", "completion": str(i)}) + "\n" for i in range(10)))
    reset_plugin_manager()
    try:
        train(
            resolve(
                None,
                dict(
                    backend="numpy",
                    model="random:tiny",
                    data=str(data),
                    output_dir=str(tmp_path / "run"),
                    n_steps=3,
                    batch_size=2,
                    accumulation_steps=2,
                    save_every=1,
                    eval_every=2,
                    lora_r=4,
                ),
                environ={},
            ),
            quiet=True,
        )
    finally:
        reset_plugin_manager()
    run = tmp_path / "run"
    checkpoint_files = [p for p in (run / "checkpoints").rglob("*") if p.is_file()]
    assert checkpoint_files and {p.suffix for p in checkpoint_files} <= {".safetensors", ".json"}, checkpoint_files
    run_files = [p for p in run.rglob("*") if p.is_file()]
    assert {p.suffix for p in run_files} <= {".safetensors", ".json", ".jsonl", ".yaml", ".png"}, run_files
    for p in run_files:
        if p.suffix == ".safetensors":
            with safe_open(str(p), framework="numpy") as f:  # parses: a real safetensors file
                assert list(f.keys())
        elif p.suffix == ".json":
            json.loads(p.read_text())

"""The bad-input corpus: one row per case, as data. test_bad_inputs.py runs every row.

A row is ``Case(name, argv, expect, files=..., prepare=..., env=...)``. Before it runs, the case
directory ``{d}`` holds ``train.jsonl`` (20 good records), ``run.yaml`` (``{cfg}``: a valid
numpy-backend config training into ``{run}``) and, in ``{run}``, a copy of a finished 4-step run
(checkpoints 2 and 4). ``files`` are then written under ``{d}`` and ``prepare(ctx)`` edits what
it needs (a model directory, a checkpoint, a plugin package). Placeholders ``{d}``, ``{run}``,
``{cfg}`` and ``{model}`` (a copy of the random:tiny model directory, made on request) are
filled in argv and expect.

Every case must end with exit code 2, one ``error: ...`` line on stderr containing ``expect``,
no traceback, and every file that was in ``{run}`` still there with the same bytes: new runs
are given ``--overwrite``, so the corpus also proves that bad input is caught before the old
run is cleared.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRAIN = ["train", "{cfg}", "--overwrite", "--quiet"]  # a new run over the finished one in {run}
RESUME = ["train", "--resume", "{run}", "--n_steps", "6", "--quiet"]
CKPT = "{run}/checkpoints/step-000004"


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    prepare: Callable[[Any], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    run_dir: str = "finished"  # "finished": {run} holds a finished run; "none": {run} does not exist
    creates: bool = False  # the error comes after training started: new files in {run} are allowed
    subprocess: bool = False  # run the real console script (plugin loading as a user sees it)


def jsonl(*records: Any) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


GOOD = {"prompt": "1+1=", "completion": "2"}


# ---------------------------------------------------------------- helpers for prepare()


def edit_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **changes)))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def reseal(checkpoint: Path) -> None:
    """Rewrite the file table of trainer_state.json as if the edited files had been written by
    the checkpoint writer, so the case reaches the backend's own loader."""
    import hashlib

    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["files"] = {
        p.relative_to(checkpoint).as_posix(): {
            "size": p.stat().st_size,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        }
        for p in sorted(checkpoint.rglob("*"))
        if p.is_file() and p.name != "trainer_state.json"
    }
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))


def model(edit: Callable[[Path], None]) -> Callable[[Any], None]:
    """prepare(): copy the random:tiny model directory to {model}, then ``edit`` it."""

    def prepare(ctx: Any) -> None:
        edit(ctx.model_dir())

    return prepare


def checkpoint(edit: Callable[[Path], None], resealed: bool = False) -> Callable[[Any], None]:
    def prepare(ctx: Any) -> None:
        path = ctx.run / "checkpoints" / "step-000004"
        edit(path)
        if resealed:
            reseal(path)

    return prepare


def rank8_adapter(ckpt: Path) -> None:
    """Replace the rank-4 adapter with a rank-8 one of the same model width."""
    import dataclasses

    import numpy as np

    from loraswitch.core.api import read_adapter_config, read_tensors, tensor_name, write_adapter

    key_a, key_b = tensor_name("proj", "A"), tensor_name("proj", "B")
    dim = read_tensors(ckpt / "adapter" / "adapter_model.safetensors")[key_a].shape[1]
    rng = np.random.default_rng(0)
    config = dataclasses.replace(read_adapter_config(ckpt / "adapter"), r=8)
    write_adapter(ckpt / "adapter", config, {key_a: rng.normal(size=(8, dim)), key_b: rng.normal(size=(dim, 8))})


def plugin_package(name: str, module_source: str, entry: str | None = None) -> Callable[[Any], None]:
    """prepare(): a one-module plugin 'installed' in {d}/site: a dist-info directory with
    entry_points.txt is all importlib.metadata needs. The test puts {d}/site on the path."""

    def prepare(ctx: Any) -> None:
        site = ctx.d / "site"
        info = site / f"{name}-0.1.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[loraswitch]\n{entry or name} = {name}_plugin\n")
        (site / f"{name}_plugin.py").write_text(module_source)

    return prepare


def both(*prepares: Callable[[Any], None]) -> Callable[[Any], None]:
    def prepare(ctx: Any) -> None:
        for p in prepares:
            p(ctx)

    return prepare


DUPLICATE_NUMPY = """
from loraswitch.core import hookimpl

@hookimpl
def register_backends(register):
    register("numpy", lambda: None, description="a second numpy backend")
"""

RAISES_AT_RUN_START = """
from loraswitch.core import hookimpl

@hookimpl
def on_run_start(run):
    raise RuntimeError("dashboard unreachable")
"""

RAISES_IN_REGISTER = """
from loraswitch.core import hookimpl

@hookimpl
def register_backends(register):
    raise KeyError("cuda_version")
"""

RAISES_IN_SOURCE = """
from loraswitch.core import hookimpl

@hookimpl
def resolve_model_source(source, cache_dir):
    if source.startswith("hub:"):
        raise ConnectionError("no network")
"""


# ---------------------------------------------------------------- the corpus

CASES: list[Case] = [
    # ------------------------------------------------------------ configs
    Case(
        "config-unknown-key-toml-table",
        ["train", "{d}/c.toml", "--quiet"],
        "{d}/c.toml: unknown key 'lora'",
        files={"c.toml": "[lora]\nr = 4\n"},
    ),
    Case(
        "config-unknown-key-suggests",
        ["train", "{d}/c.yaml", "--quiet"],
        "unknown key 'learning_rate'; did you mean 'learning_rate_multiplier'?",
        files={"c.yaml": "learning_rate: 0.1\n"},
    ),
    Case(
        "config-wrong-type-int",
        ["train", "{d}/c.yaml", "--quiet"],
        "{d}/c.yaml: lora_r = 'four'",
        files={"c.yaml": "lora_r: four\n"},
    ),
    Case(
        "config-wrong-type-float-for-int",
        ["train", "{d}/c.yaml", "--quiet"],
        "batch_size = 2.5",
        files={"c.yaml": "batch_size: 2.5\n"},
    ),
    Case(
        "config-wrong-type-bool-for-int",
        ["train", "{d}/c.yaml", "--quiet"],
        "batch_size = True: must be a number",
        files={"c.yaml": "batch_size: yes\n"},
    ),
    Case(
        "config-wrong-type-list",
        ["train", "{d}/c.yaml", "--quiet"],
        "lora_target_modules = 5",
        files={"c.yaml": "lora_target_modules: 5\n"},
    ),
    Case(
        "config-wrong-type-mesh",
        ["train", "{d}/c.yaml", "--quiet"],
        "mesh = [1, 2]",
        files={"c.yaml": "mesh: [1, 2]\n"},
    ),
    Case(
        "config-literal-precision",
        ["train", "{d}/c.yaml", "--quiet"],
        "precision = 'fp16'",
        files={"c.yaml": "precision: fp16\n"},
    ),
    Case(
        "config-literal-lr-schedule",
        ["train", "{d}/c.toml", "--quiet"],
        "lr_schedule = 'exponential'",
        files={"c.toml": 'lr_schedule = "exponential"\n'},
    ),
    Case(
        "config-range-negative-alpha",
        ["train", "{d}/c.yaml", "--quiet"],
        "lora_alpha = -1",
        files={"c.yaml": "lora_alpha: -1\n"},
    ),
    Case(
        "config-range-zero-lr",
        ["train", "{d}/c.toml", "--quiet"],
        "learning_rate_multiplier = 0.0",
        files={"c.toml": "learning_rate_multiplier = 0.0\n"},
    ),
    Case(
        "config-range-nan-lr",
        ["train", "{d}/c.yaml", "--quiet"],
        "learning_rate_multiplier = nan",
        files={"c.yaml": "learning_rate_multiplier: .nan\n"},
    ),
    Case(
        "config-range-max-seq-len",
        ["train", "{d}/c.yaml", "--quiet"],
        "max_seq_len = 1",
        files={"c.yaml": "max_seq_len: 1\n"},
    ),
    Case("config-range-seed", ["train", "{d}/c.yaml", "--quiet"], "seed = -3", files={"c.yaml": "seed: -3\n"}),
    Case(
        "config-range-grad-norm",
        ["train", "{d}/c.yaml", "--quiet"],
        "max_grad_norm = 0",
        files={"c.yaml": "max_grad_norm: 0\n"},
    ),
    Case(
        "config-range-training-split",
        ["train", "{d}/c.yaml", "--quiet"],
        "training_split = 1.0",
        files={"c.yaml": "training_split: 1.0\n"},
    ),
    Case("config-range-stop-eval-loss-cli", TRAIN + ["--stop_eval_loss", "-1"], "command line: stop_eval_loss = -1"),
    Case(
        "config-conflict-warmup",
        ["train", "{d}/c.yaml", "--quiet"],
        "warmup_steps (10) must not exceed n_steps (5)",
        files={"c.yaml": "n_steps: 5\nwarmup_steps: 10\n"},
    ),
    Case(
        "config-invalid-yaml",
        ["train", "{d}/c.yaml", "--quiet"],
        "{d}/c.yaml:2: invalid YAML",
        files={"c.yaml": "lora_r: 4\nlora_alpha: 8: 9\n"},
    ),
    Case(
        "config-invalid-toml",
        ["train", "{d}/c.toml", "--quiet"],
        "{d}/c.toml: invalid TOML",
        files={"c.toml": "lora_r = \n"},
    ),
    Case(
        "config-not-utf8",
        ["train", "{d}/c.yaml", "--quiet"],
        "{d}/c.yaml: config file is not UTF-8 text",
        files={"c.yaml": b"lora_r: 4\n# caf\xe9\n"},
    ),
    Case(
        "config-not-a-mapping",
        ["train", "{d}/c.yaml", "--quiet"],
        "must be a mapping of key: value, got list",
        files={"c.yaml": "- lora_r\n- 4\n"},
    ),
    Case(
        "config-env-bad-value",
        TRAIN,
        "environment LORASWITCH_BATCH_SIZE: batch_size = 'big'",
        env={"LORASWITCH_BATCH_SIZE": "big"},
    ),
    Case(
        "config-no-data",
        ["train", "{d}/c.yaml", "--quiet"],
        "data: no training data file given",
        files={"c.yaml": "backend: numpy\nmodel: random:tiny\noutput_dir: fresh\n"},
        run_dir="none",
    ),
    # ------------------------------------------------------------ data files
    Case(
        "data-malformed-json",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "{d}/bad.jsonl:3: malformed JSON",
        files={"bad.jsonl": jsonl(GOOD, GOOD) + '{"prompt": "1+1=", "completion": 2\n'},
    ),
    Case(
        "data-unknown-shape",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:1: unknown record shape (keys: 'input', 'output')",
        files={"bad.jsonl": jsonl({"input": "a", "output": "b"}, GOOD)},
    ),
    Case(
        "data-mixed-shapes",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:2: record mixes shapes",
        files={"bad.jsonl": jsonl(GOOD, dict(GOOD, text="x"))},
    ),
    Case(
        "data-messages-not-list",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:1: 'messages' must be a non-empty list",
        files={"bad.jsonl": jsonl({"messages": {"role": "user"}})},
    ),
    Case(
        "data-bad-role",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:1: messages[0]: role 'bot' is not one of",
        files={"bad.jsonl": jsonl({"messages": [{"role": "bot", "content": "hi"}]})},
    ),
    Case(
        "data-no-assistant",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:1: a chat record needs at least one assistant message",
        files={"bad.jsonl": jsonl({"messages": [{"role": "user", "content": "hi"}]})},
    ),
    Case(
        "data-missing-completion",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:2: a prompt/completion record needs both keys",
        files={"bad.jsonl": jsonl(GOOD, {"prompt": "2+2="})},
    ),
    Case(
        "data-completion-not-string",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:1: 'completion' must be a string, got a number",
        files={"bad.jsonl": jsonl({"prompt": "2+2=", "completion": 4})},
    ),
    Case(
        "data-array-line",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:1: expected a JSON object, got an array",
        files={"bad.jsonl": jsonl([GOOD, GOOD])},
    ),
    Case(
        "data-bad-weight",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "'weight' must be 0 or 1, got 0.5",
        files={
            "bad.jsonl": jsonl(
                {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0.5}]}
            )
        },
    ),
    Case(
        "data-empty",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "{d}/bad.jsonl: data file has no records",
        files={"bad.jsonl": ""},
    ),
    Case(
        "data-binary",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:1: not UTF-8 text",
        files={"bad.jsonl": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4},
    ),
    Case(
        "data-utf16",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:1: not UTF-8 text",
        files={"bad.jsonl": jsonl(GOOD, GOOD).encode("utf-16")},
    ),
    Case(
        "data-huge-line",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:2: line longer than 10 MB",
        files={"bad.jsonl": jsonl(GOOD) + '{"text": "' + "a" * (10 * 1024 * 1024) + '"}\n'},
    ),
    Case(
        "data-split-leaves-validation-empty",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "leave the validation split empty",
        files={"bad.jsonl": jsonl(GOOD)},
    ),
    Case(
        "data-everything-truncated",
        TRAIN + ["--data", "{d}/bad.jsonl", "--max_seq_len", "8"],
        "the training split has no example with a target token left after truncation to max_seq_len 8",
        files={"bad.jsonl": jsonl(*[{"prompt": "a long prompt " * 4, "completion": "x"}] * 5)},
    ),
    Case("data-is-a-directory", TRAIN + ["--data", "{d}"], "{d}: data path is not a file"),
    Case(
        "data-validation-file-missing",
        TRAIN + ["--validation_data", "{d}/nope.jsonl"],
        "{d}/nope.jsonl: data file not found",
    ),
    Case(
        "data-validation-file-blank",
        TRAIN + ["--validation_data", "{d}/val.jsonl"],
        "{d}/val.jsonl: data file has no records",
        files={"val.jsonl": "\n\n  \n"},
    ),
    # ------------------------------------------------------------ model directories
    Case(
        "model-missing-config",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: missing",
        prepare=model(lambda m: (m / "config.json").unlink()),
    ),
    Case(
        "model-missing-tokenizer",
        TRAIN + ["--model", "{model}"],
        "{model}/tokenizer.json: missing",
        prepare=model(lambda m: (m / "tokenizer.json").unlink()),
    ),
    Case(
        "model-no-weights",
        TRAIN + ["--model", "{model}"],
        "{model}: no *.safetensors weights",
        prepare=model(lambda m: (m / "model.safetensors").unlink()),
    ),
    Case(
        "model-pickled-weights-only",
        TRAIN + ["--model", "{model}"],
        "pickled .bin/.pt weights are not loaded",
        prepare=model(lambda m: (m / "model.safetensors").rename(m / "pytorch_model.bin")),
    ),
    Case(
        "model-truncated-safetensors",
        TRAIN + ["--model", "{model}"],
        "{model}/model.safetensors: tensor",
        prepare=model(lambda m: truncate(m / "model.safetensors")),
    ),
    Case(
        "model-garbage-safetensors",
        TRAIN + ["--model", "{model}"],
        "{model}/model.safetensors: safetensors header length",
        prepare=model(lambda m: (m / "model.safetensors").write_bytes(b"\xff" * 64)),
    ),
    Case(
        "model-shape-mismatch",
        TRAIN + ["--model", "{model}"],
        "but config.json implies",
        prepare=model(lambda m: edit_json(m / "config.json", intermediate_size=256)),
    ),
    Case(
        "model-missing-layers",
        TRAIN + ["--model", "{model}"],
        "tensor 'model.layers.2.self_attn.q_proj.weight' is missing",
        prepare=model(lambda m: edit_json(m / "config.json", num_hidden_layers=3)),
    ),
    Case(
        "model-unsupported-architecture",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: unsupported architecture ['GPT2LMHeadModel']",
        prepare=model(lambda m: edit_json(m / "config.json", architectures=["GPT2LMHeadModel"])),
    ),
    Case(
        "model-config-not-json",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: not valid JSON",
        prepare=model(lambda m: (m / "config.json").write_text("{'architectures': ...}")),
    ),
    Case(
        "model-bad-tokenizer",
        TRAIN + ["--model", "{model}"],
        "{model}/tokenizer.json: cannot load tokenizer",
        prepare=model(lambda m: (m / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')),
    ),
    Case(
        "model-index-names-missing-shard",
        TRAIN + ["--model", "{model}"],
        "model-00002-of-00002.safetensors: missing; model.safetensors.index.json",
        prepare=model(
            lambda m: (m / "model.safetensors.index.json").write_text(
                json.dumps({"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}})
            )
        ),
    ),
    Case("model-not-found", TRAIN + ["--model", "{d}/no-such-model"], "model: cannot resolve '{d}/no-such-model'"),
    # ------------------------------------------------------------ checkpoints (resume)
    Case(
        "ckpt-truncated-tensors",
        RESUME,
        CKPT + "/adapter/adapter_model.safetensors: ",
        prepare=checkpoint(lambda c: truncate(c / "adapter/adapter_model.safetensors")),
    ),
    Case(
        "ckpt-trainer-state-not-json",
        RESUME,
        CKPT + "/trainer_state.json: not valid JSON",
        prepare=checkpoint(lambda c: (c / "trainer_state.json").write_text('{"step": 4, "files": {')),
    ),
    Case(
        "ckpt-trainer-state-step-edited",
        RESUME,
        "trainer_state.json: step = 7, but the directory is step-000004",
        prepare=checkpoint(lambda c: edit_json(c / "trainer_state.json", step=7)),
    ),
    Case(
        "ckpt-trainer-state-elapsed-edited",
        RESUME,
        "trainer_state.json: elapsed_s = 'slow': must be a number",
        prepare=checkpoint(lambda c: edit_json(c / "trainer_state.json", elapsed_s="slow")),
    ),
    Case(
        "ckpt-optimizer-file-deleted",
        RESUME,
        "optimizer.safetensors: missing, though trainer_state.json lists it",
        prepare=checkpoint(lambda c: (c / "backend_state/optimizer.safetensors").unlink()),
    ),
    Case(
        "ckpt-truncated-tensors-resealed",
        RESUME,
        CKPT + "/adapter/adapter_model.safetensors: tensor 'base_model.model.proj.lora_A.weight' ends at byte",
        prepare=checkpoint(lambda c: truncate(c / "adapter/adapter_model.safetensors"), resealed=True),
    ),
    Case(
        "ckpt-adapter-of-another-rank",
        RESUME,
        "adapter_config.json: r = 8 but this run trains lora_r = 4",
        prepare=checkpoint(rank8_adapter, resealed=True),
    ),
    Case(
        "ckpt-adapter-config-edited",
        RESUME,
        CKPT + "/adapter/adapter_config.json: r = 'four': must be a positive integer",
        prepare=checkpoint(lambda c: edit_json(c / "adapter/adapter_config.json", r="four"), resealed=True),
    ),
    Case(
        "ckpt-optimizer-of-unknown-format",
        RESUME,
        "optimizer.json: format 'torch-adamw/9' is not 'loraswitch-adamw/1'",
        prepare=checkpoint(
            lambda c: edit_json(c / "backend_state/optimizer.json", format="torch-adamw/9"), resealed=True
        ),
    ),
    Case(
        # Any backend may resume any other's checkpoint (adapter and AdamW state are portable), but
        # the numpy example's one-linear model is not the Llama the torch backend builds.
        "ckpt-from-another-backend-and-model-shape",
        RESUME + ["--backend", "torch"],
        "adapter_config.json: target_modules = ['proj'] but this run has lora_target_modules",
    ),
    Case(
        "ckpt-from-another-model",
        RESUME,
        "checkpoint was written by model 'random:tiny', but the run uses '{model}'",
        prepare=lambda ctx: (ctx.run / "config.yaml").write_text(
            (ctx.run / "config.yaml").read_text().replace("model: random:tiny", f"model: {ctx.model_dir()}")
        ),
    ),
    Case(
        "run-config-not-yaml",
        RESUME,
        "{run}/config.yaml: not valid YAML",
        prepare=lambda ctx: (ctx.run / "config.yaml").write_text("lora_r: [4\n"),
    ),
    Case(
        "run-config-unknown-key",
        RESUME,
        "{run}/config.yaml: unknown key 'lora_rank'; did you mean 'lora_r'?",
        prepare=lambda ctx: (ctx.run / "config.yaml").write_text(
            (ctx.run / "config.yaml").read_text() + "lora_rank: 4\n"
        ),
    ),
    # ------------------------------------------------------------ plugins (packages made on the fly)
    Case(
        "plugin-fails-to-import",
        TRAIN,
        'plugin "brokenplug" (brokenplug_plugin) failed to import: ModuleNotFoundError',
        prepare=plugin_package("brokenplug", "import a_module_that_is_not_installed\n"),
    ),
    Case(
        "plugin-fails-to-import-console-script",
        TRAIN,
        'plugin "brokenplug" (brokenplug_plugin) failed to import: SyntaxError',
        prepare=plugin_package("brokenplug", "def register_backends(:\n"),
        subprocess=True,
    ),
    Case(
        "plugin-raises-in-register-backends",
        TRAIN,
        'plugin "gpuinfo" raised in hook register_backends: KeyError',
        prepare=plugin_package("gpuinfo", RAISES_IN_REGISTER),
    ),
    Case(
        "plugin-raises-in-model-source",
        TRAIN + ["--model", "hub:org/name"],
        'plugin "hubsource" raised in hook resolve_model_source: ConnectionError: no network',
        prepare=plugin_package("hubsource", RAISES_IN_SOURCE),
    ),
    Case(
        "plugin-raises-at-run-start",
        ["train", "{cfg}", "--quiet"],
        'plugin "dashboard" raised in hook on_run_start: RuntimeError: dashboard unreachable',
        prepare=plugin_package("dashboard", RAISES_AT_RUN_START),
        run_dir="none",
        creates=True,
    ),
    Case(
        "plugin-duplicate-backend-name",
        TRAIN,
        'backend "numpy" is registered by both plugin "numpy" and plugin "numpy2"',
        prepare=plugin_package("numpy2", DUPLICATE_NUMPY),
    ),
    Case(
        "plugin-duplicate-backend-name-console-script",
        TRAIN,
        'backend "numpy" is registered by both plugin',
        prepare=plugin_package("numpy2", DUPLICATE_NUMPY),
        subprocess=True,
    ),
    # ------------------------------------------------------------ the output directory
    Case(
        "output-parent-is-a-file",
        TRAIN + ["--output_dir", "{d}/train.jsonl/run"],
        "output_dir: {d}/train.jsonl is not a directory",
    ),
    Case(
        "output-is-a-file",
        TRAIN + ["--output_dir", "{d}/train.jsonl"],
        "output_dir: {d}/train.jsonl exists and is not a directory",
    ),
    Case(
        "output-unwritable",
        TRAIN + ["--output_dir", "/sys/kernel/loraswitch-test-run"],
        "output_dir: cannot write in /sys/kernel",
    ),  # sysfs refuses new files even to root
    Case(
        "output-disk-full",
        TRAIN,
        "output_dir: {run} has 0 MiB free; this run needs at least",
        prepare=lambda ctx: ctx.fake_free_bytes(1000),
    ),
    Case(
        "output-holds-a-run",
        ["train", "{cfg}", "--quiet"],
        "output_dir: {run} already holds a run; continue it with --resume",
    ),
    Case(
        "output-resume-not-a-run",
        ["train", "--resume", "{d}"],
        "{d}/config.yaml: missing; {d} is not a loraswitch run directory",
    ),
]

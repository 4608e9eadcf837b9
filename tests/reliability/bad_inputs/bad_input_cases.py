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
import os
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


def qwen_model(shape: str, **changes: Any) -> Callable[[Any], None]:
    """prepare(): a random:<shape> directory (tiny-qwen2, tiny-qwen3) at {model}, config.json edited."""

    def prepare(ctx: Any) -> None:
        from loraswitch.core.models.random_model import write_random_model

        write_random_model(ctx.d / "model", shape)
        edit_json(ctx.d / "model" / "config.json", **changes)

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


def symlink_loop(name: str) -> Callable[[Any], None]:
    """prepare(): {d}/NAME is a symlink to itself."""

    def prepare(ctx: Any) -> None:
        os.symlink(ctx.d / name, ctx.d / name)

    return prepare


def fifo(name: str) -> Callable[[Any], None]:
    """prepare(): {d}/NAME (or a path under {model}) is a FIFO: opening it would block forever."""

    def prepare(ctx: Any) -> None:
        path = ctx.d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        os.mkfifo(path)

    return prepare


def small_vocab_model(vocab_size: int = 200) -> Callable[[Any], None]:
    """prepare(): {model} is a random model of ``vocab_size`` with the byte tokenizer, whose
    ids reach 258 (bytes 0-255, then its three added tokens)."""

    def prepare(ctx: Any) -> None:
        from loraswitch.core.models.random_model import write_random_model
        from loraswitch.core.models.shapes import shape_config

        config = dict(shape_config("tiny"), vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=1)
        write_random_model(ctx.d / "model", config)

    return prepare


def vocab_entry_past_vocab(m: Path) -> None:
    """tokenizer.json's own vocabulary gains an entry with id 600 (the model has 512 rows)."""
    tok = json.loads((m / "tokenizer.json").read_text())
    tok["model"]["vocab"]["\u0120hello"] = 600
    (m / "tokenizer.json").write_text(json.dumps(tok))


def retype_weights(dtype: str, only: str | None = None) -> Callable[[Path], None]:
    def edit(m: Path) -> None:
        import numpy as np
        from safetensors.numpy import load_file, save_file

        weights = load_file(str(m / "model.safetensors"))
        for name in [only] if only else list(weights):
            weights[name] = weights[name].astype(np.dtype(dtype))
        save_file(weights, str(m / "model.safetensors"), metadata={"format": "pt"})

    return edit


def rewrite_header(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """Edit model.safetensors' JSON header in place (data bytes kept)."""

    def apply(m: Path) -> None:
        import struct

        raw = (m / "model.safetensors").read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        edit(header)
        body = json.dumps(header).encode()
        (m / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])

    return apply


def first_tensor(header: dict) -> dict:
    return header[sorted(k for k in header if k != "__metadata__")[0]]


DEEP = "[" * 100_000 + "]" * 100_000


def tiny_adapter(**config_changes: Any) -> Callable[[Any], None]:
    """prepare(): a PEFT adapter for the random:tiny model in {d}/adapter (q_proj and v_proj of
    both layers, r = 2) with the base's fingerprint, as a backend writes it, but by numpy;
    ``config_changes`` edit its adapter_config.json.
    A ``"q_in": N`` change gives layer 0's q_proj lora_A N inputs instead of 64."""

    def prepare(ctx: Any) -> None:
        import numpy as np
        from safetensors.numpy import save_file

        changes = dict(config_changes)
        q_in = changes.pop("q_in", 64)
        rng = np.random.default_rng(0)
        tensors = {}
        for layer in (0, 1):
            for module, out in (("q_proj", 64), ("v_proj", 32)):
                key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
                n_in = q_in if (layer, module) == (0, "q_proj") else 64
                tensors[f"{key}.lora_A.weight"] = rng.normal(size=(2, n_in)).astype(np.float32)
                tensors[f"{key}.lora_B.weight"] = rng.normal(size=(out, 2)).astype(np.float32)
        adapter = ctx.d / "adapter"
        adapter.mkdir(exist_ok=True)
        save_file(tensors, str(adapter / "adapter_model.safetensors"))
        config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}
        config["base_model_name_or_path"] = str(ctx.model_dir())
        (adapter / "adapter_config.json").write_text(json.dumps(dict(config, **changes)))
        from loraswitch.core.export.fingerprint import write_base_fingerprint

        write_base_fingerprint(adapter, ctx.model_dir(), "random:tiny")

    return prepare


def disk_full(ctx: Any) -> None:
    """The third block the safetensors shard writer puts on disk fails with ENOSPC."""
    import errno

    from loraswitch.core.export import shards

    calls = []

    def write(f, data):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(data)

    ctx.monkeypatch.setattr(shards, "write_bytes", write)


def foreign_fingerprint(ctx: Any) -> None:
    (ctx.d / "adapter" / "loraswitch_base.json").write_text(json.dumps({"fingerprint": "v1:" + "0" * 64}))


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
        "config-template-kwargs-not-a-mapping",
        ["train", "{d}/c.yaml", "--quiet"],
        "chat_template_kwargs = 'enable_thinking=false'",
        files={"c.yaml": "chat_template_kwargs: enable_thinking=false\n"},
    ),
    Case(
        "config-template-kwargs-reserved-name",
        TRAIN + ["--chat_template_kwargs", "{{messages: []}}"],
        "chat_template_kwargs = {{'messages': []}}: 'messages' is set by loraswitch itself",
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
        "data-alpaca-missing-output",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:2: an Alpaca record needs 'instruction' and 'output'; 'output' is missing",
        files={"bad.jsonl": jsonl({"instruction": "a", "output": "b"}, {"instruction": "c", "input": "d"})},
    ),
    Case(
        "data-json-array-item",
        TRAIN + ["--data", "{d}/bad.json"],
        "{d}/bad.json[1]: conversations[0]: 'from' 'robot' is not one of human, gpt, system",
        files={"bad.json": json.dumps([GOOD, {"conversations": [{"from": "robot", "value": "x"}]}])},
    ),
    Case(
        "data-csv-row",
        TRAIN + ["--data", "{d}/bad.csv", "--data_format", "prompt_completion"],
        "{d}/bad.csv: row 0: a prompt/completion record needs both keys; 'completion' is missing",
        files={"bad.csv": "prompt,answer\n1+1,2\n2+2,4\n"},
    ),
    Case(
        "data-tool-call-arguments",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:1: messages[1]: tool_calls[0]: 'function.arguments': not valid JSON",
        files={
            "bad.jsonl": jsonl(
                {
                    "messages": [
                        {"role": "user", "content": "a"},
                        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]},
                    ]
                }
            )
        },
    ),
    Case(
        "data-hf-not-cached",
        TRAIN + ["--data", "hf:nobody/nothing"],
        "data: hf:nobody/nothing is not in the local datasets cache",
    ),
    Case(
        "config-data-fields-unknown",
        TRAIN + ["--data_fields", "{{answer: a}}"],
        "'answer' is not a field loraswitch reads",
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
    # a directory is read as a datasets save_to_disk directory (docs/data.md); this one is not one
    Case("data-is-a-directory", TRAIN + ["--data", "{d}"], "{d}: not a datasets save_to_disk directory"),
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
    # A Qwen config asking for what no backend (or not the jax one) computes: one line naming it.
    Case(
        "qwen-moe-architecture",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: architecture Qwen3MoeForCausalLM (mixture of experts) is not supported; "
        "supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM",
        prepare=qwen_model("tiny-qwen3", architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe"),
    ),
    Case(
        "qwen-moe-keys-in-dense-config",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: key 'num_experts' = 8 describes a mixture-of-experts model; Qwen2ForCausalLM is dense",
        prepare=qwen_model("tiny-qwen2", num_experts=8, num_experts_per_tok=2),
    ),
    Case(
        "qwen-sliding-layer-without-window",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: layer_types[1] is sliding_attention but sliding_window is null",
        prepare=qwen_model("tiny-qwen3", layer_types=["full_attention", "sliding_attention"], sliding_window=None),
    ),
    Case(
        "qwen-unknown-layer-type",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: layer_types[0] = 'chunked_attention' is not supported",
        prepare=qwen_model("tiny-qwen2", layer_types=["chunked_attention", "full_attention"]),
    ),
    Case(
        "qwen-rope-type",  # refused on every backend: the jax model does not compute it (one rule for both)
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: rope type 'yarn' is not supported (supported: default, linear, llama3)",
        prepare=qwen_model(
            "tiny-qwen2", rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}
        ),
    ),
    Case(
        "gemma3-multimodal",  # Gemma 3 4B and up: a vision tower around the text model
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: architecture Gemma3ForConditionalGeneration (vision-language; Gemma3ForCausalLM "
        "(the 1B layout) is supported) is not supported",
        prepare=qwen_model("tiny-gemma3", architectures=["Gemma3ForConditionalGeneration"], model_type="gemma3"),
    ),
    Case(
        "gemma3-attention-softcap",  # transformers' Gemma 3 ignores it: refused rather than silently ignored
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: attn_logit_softcapping is set, but transformers' Gemma 3 attention ignores it",
        prepare=qwen_model("tiny-gemma3", attn_logit_softcapping=50.0),
    ),
    Case(
        "phi3-longrope",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: rope_scaling type 'longrope' (Phi-3's long-context scaling) is not supported",
        prepare=qwen_model(
            "tiny-phi3", rope_scaling={"type": "longrope", "long_factor": [1.0] * 8, "short_factor": [1.0] * 8}
        ),
    ),
    Case(
        "phi3-partial-rotary",  # Phi-4-mini
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: partial_rotary_factor 0.75 is not supported",
        prepare=qwen_model("tiny-phi3", partial_rotary_factor=0.75),
    ),
    Case(
        "qwen-target-module-jax",
        TRAIN + ["--model", "{model}", "--backend", "jax", "--lora_target_modules", "q_proj,qkv_proj"],
        "lora_target_modules: 'qkv_proj' is not a linear layer of a Qwen3 block; choose from down_proj, gate_proj",
        prepare=qwen_model("tiny-qwen3"),
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
        "{run}/config.yaml:2: invalid YAML",
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
    # ------------------------------------------------------------ merge and export
    Case(
        "merge-adapter-of-another-model",
        ["merge", "{run}", "--out", "{d}/merged"],
        "LoRA module 'proj' has no base tensor 'proj.weight'",  # the numpy backend's toy model
    ),
    Case(
        "merge-adapter-shape-does-not-fit",
        ["merge", "--adapter", "{d}/adapter", "--out", "{d}/merged"],
        "(lora_B [64, 2] x lora_A [2, 48]) does not fit base tensor 'model.layers.0.self_attn.q_proj.weight' F32 [64, 64]",
        prepare=tiny_adapter(q_in=48),
    ),
    Case(
        "merge-unknown-dtype",
        ["merge", "--adapter", "{d}/adapter", "--out", "{d}/merged", "--dtype", "fp8"],
        "argument --dtype: invalid choice: 'fp8'",
        prepare=tiny_adapter(),
    ),
    Case(
        "merge-output-exists",
        ["merge", "--adapter", "{d}/adapter", "--out", "{d}/train.jsonl"],
        "--out: {d}/train.jsonl exists; give --overwrite to replace it",
        prepare=tiny_adapter(),
    ),
    Case(
        "merge-disk-full",
        ["merge", "--adapter", "{d}/adapter", "--out", "{d}/merged"],
        "--out: cannot write {d}/merged (no space left on device); nothing was written",
        prepare=both(tiny_adapter(), disk_full),
    ),
    Case(
        "merge-base-fingerprint-differs",
        ["merge", "--adapter", "{d}/adapter", "--out", "{d}/merged"],
        "the adapter was trained on other base weights than {model}",
        prepare=both(tiny_adapter(), foreign_fingerprint),
    ),
    Case(
        "merge-dora-adapter",
        ["merge", "--adapter", "{d}/adapter", "--out", "{d}/merged"],
        "{d}/adapter/adapter_config.json: use_dora = True is not supported",
        prepare=tiny_adapter(use_dora=True),
    ),
    Case(
        "merge-pickled-adapter",
        ["merge", "--adapter", "{d}/adapter", "--out", "{d}/merged"],
        "adapter_model.safetensors: missing (adapter_model.bin uses pickle, which loraswitch does not load)",
        prepare=both(
            tiny_adapter(),
            lambda ctx: (ctx.d / "adapter" / "adapter_model.safetensors").rename(
                ctx.d / "adapter" / "adapter_model.bin"
            ),
        ),
    ),
    Case(
        "merge-base-without-weights",
        ["merge", "--adapter", "{d}/adapter", "--model", "random:llama-8b", "--out", "{d}/merged"],
        "model: random:llama-8b has no weights on disk",
        prepare=tiny_adapter(),
    ),
    Case(
        "merge-hub-base-name",
        ["merge", "--adapter", "{d}/adapter", "--out", "{d}/merged"],
        "the base 'meta-llama/Llama-3.2-1B' is not a local directory, builtin: or random: source; give --model SOURCE",
        prepare=tiny_adapter(base_model_name_or_path="meta-llama/Llama-3.2-1B"),
    ),
    Case(
        "merge-bad-shard-size",
        ["merge", "{run}", "--out", "{d}/merged", "--max_shard_size", "lots"],
        "--max_shard_size 'lots': expected a size such as 5GB",
    ),
    Case(
        "export-unknown-format",
        ["export", "{run}", "--format", "onnx", "--out", "{d}/m.onnx"],
        "argument --format: invalid choice: 'onnx'",
    ),
    Case(
        "export-lora-q8_0",
        ["export", "--adapter", "{d}/adapter", "--format", "gguf-lora", "--dtype", "q8_0", "--out", "{d}/a.gguf"],
        "--dtype q8_0: not available for --format gguf-lora; choose one of f32, f16, bf16",
        prepare=tiny_adapter(),
    ),
    Case(
        "export-out-is-a-directory",
        ["export", "--adapter", "{d}/adapter", "--format", "gguf", "--out", "{d}", "--overwrite"],
        "--out: {d} is a directory; give a file name such as {d}/model.gguf",
        prepare=tiny_adapter(),
    ),
    Case(
        "export-unsupported-architecture",
        ["export", "--model", "{model}", "--format", "gguf", "--out", "{d}/m.gguf"],
        "config.json: architecture ['GPT2LMHeadModel'] has no GGUF export yet",
        prepare=model(lambda m: edit_json(m / "config.json", architectures=["GPT2LMHeadModel"])),
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

# ---------------------------------------------------------------- issue 19: inputs that used to crash, and their classes
CHAT_SURROGATE = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "w1 \\ud800"}]}'
RESUME_FROM_HINT = "is damaged; to resume from the newest complete one instead, add --resume_from step-000002"


def add_tensor(m: Path) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(m / "model.safetensors"))
    weights["model.layers.0.mlp.extra_proj.weight"] = np.zeros((4, 4), np.float32)
    save_file(weights, str(m / "model.safetensors"), metadata={"format": "pt"})


def deep_header(header: dict) -> None:
    value: list = []
    for _ in range(200):
        value = [value]
    header["__metadata__"] = {"deep": value}


def edit_text(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def edit_bytes_keeping_size(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


def manifest_escapes(c: Path) -> None:
    state = json.loads((c / "trainer_state.json").read_text())
    state["files"]["../../config.yaml"] = {"size": 1, "sha256": "0" * 64}
    (c / "trainer_state.json").write_text(json.dumps(state))


CASES += [
    # ------------------------------------------------------------ data: nesting, Unicode, JSON extensions
    Case(
        "data-nested-100000-deep",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:2: JSON nested 100000 levels deep; at most 100 are accepted",
        files={"bad.jsonl": jsonl(GOOD) + DEEP + "\n"},
    ),
    Case(
        "data-objects-one-level-past-the-limit",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:1: JSON nested 101 levels deep",
        files={"bad.jsonl": '{"a":' * 101 + "1" + "}" * 101 + "\n"},
    ),
    Case(
        "data-lone-surrogate-in-content",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:2: a string holds the lone UTF-16 surrogate \\ud800; it is not valid Unicode",
        files={"bad.jsonl": jsonl(GOOD) + CHAT_SURROGATE + "\n"},
    ),
    Case(
        "data-lone-low-surrogate-in-prompt",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:1: a string holds the lone UTF-16 surrogate \\udfff",
        files={"bad.jsonl": '{"prompt": "a\\udfff", "completion": "b"}\n'},
    ),
    Case(
        "data-surrogates-in-the-wrong-order",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:1: a string holds the lone UTF-16 surrogate \\udc00",
        files={"bad.jsonl": '{"text": "\\udc00\\ud800"}\n'},
    ),
    Case(
        "data-nan-literal",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:1: malformed JSON: NaN is not a JSON number",
        files={"bad.jsonl": '{"prompt": "a", "completion": "b", "score": NaN}\n'},
    ),
    Case(
        "data-5000-digit-integer",
        TRAIN + ["--data", "{d}/bad.jsonl"],
        "bad.jsonl:1: malformed JSON: Exceeds the limit (4300 digits) for integer string conversion",
        files={"bad.jsonl": '{"text": "a", "id": ' + "9" * 5000 + "}\n"},
    ),
    # ------------------------------------------------------------ data: paths that are not files
    Case(
        "data-symlink-loop",
        TRAIN + ["--data", "{d}/loop.jsonl"],
        "{d}/loop.jsonl: symlink loop",
        prepare=symlink_loop("loop.jsonl"),
    ),
    Case(
        "data-dangling-symlink",
        TRAIN + ["--data", "{d}/gone.jsonl"],
        "{d}/gone.jsonl: a symlink to '{d}/nowhere.jsonl', which does not exist",
        prepare=lambda ctx: os.symlink(ctx.d / "nowhere.jsonl", ctx.d / "gone.jsonl"),
    ),
    Case(
        "data-fifo",
        TRAIN + ["--data", "{d}/pipe.jsonl"],
        "{d}/pipe.jsonl: data file is a FIFO (named pipe), not a regular file",
        prepare=fifo("pipe.jsonl"),
    ),
    Case(
        "data-device",
        TRAIN + ["--data", "/dev/zero"],
        "/dev/zero: data file is a device, not a regular file",
    ),
    Case(
        "data-validation-file-fifo",
        TRAIN + ["--validation_data", "{d}/pipe.jsonl"],
        "{d}/pipe.jsonl: data file is a FIFO (named pipe), not a regular file",
        prepare=fifo("pipe.jsonl"),
    ),
    # ------------------------------------------------------------ configs: paths, nesting, infinities
    Case(
        "config-fifo",
        ["train", "{d}/c.yaml", "--quiet"],
        "{d}/c.yaml: config file is a FIFO (named pipe), not a regular file",
        prepare=fifo("c.yaml"),
    ),
    Case(
        "config-symlink-loop",
        ["train", "{d}/c.yaml", "--quiet"],
        "{d}/c.yaml: symlink loop",
        prepare=symlink_loop("c.yaml"),
    ),
    Case(
        "config-yaml-nested-too-deeply",
        ["train", "{d}/c.yaml", "--quiet"],
        "{d}/c.yaml: invalid YAML: nested too deeply",
        files={"c.yaml": "lora_target_modules: " + "[" * 5000 + "\n"},
    ),
    Case(
        "config-toml-nested-too-deeply",
        ["train", "{d}/c.toml", "--quiet"],
        "{d}/c.toml: invalid TOML: nested too deeply",
        files={"c.toml": "lora_target_modules = " + "[" * 100_000 + "\n"},
    ),
    Case(
        "config-inf-lr-yaml",
        ["train", "{d}/c.yaml", "--quiet"],
        "{d}/c.yaml: learning_rate_multiplier = inf: Input should be a finite number",
        files={"c.yaml": "learning_rate_multiplier: .inf\n"},
    ),
    Case(
        "config-inf-alpha-toml",
        ["train", "{d}/c.toml", "--quiet"],
        "{d}/c.toml: lora_alpha = inf: Input should be a finite number",
        files={"c.toml": "lora_alpha = inf\n"},
    ),
    Case(
        "config-inf-weight-decay-env",
        TRAIN,
        "environment LORASWITCH_WEIGHT_DECAY: weight_decay = 'inf': Input should be a finite number",
        env={"LORASWITCH_WEIGHT_DECAY": "inf"},
    ),
    Case(
        "config-overflowing-float-flag",
        TRAIN + ["--max_grad_norm", "1e999"],
        "command line: max_grad_norm = '1e999': Input should be a finite number",
    ),
    Case(
        "config-nan-stop-eval-loss-flag",
        TRAIN + ["--stop_eval_loss", "nan"],
        "command line: stop_eval_loss = 'nan': Input should be a finite number",
    ),
    Case(
        "config-env-nested-too-deeply",
        TRAIN,
        "environment LORASWITCH_LORA_TARGET_MODULES: value nested too deeply",
        env={"LORASWITCH_LORA_TARGET_MODULES": "[" * 5000},
    ),
    Case(
        "config-json-never-prints-infinity",
        ["config", "--lora_alpha", "inf", "--json"],
        "command line: lora_alpha = 'inf': Input should be a finite number",
    ),
    # ------------------------------------------------------------ model: tokenizer ids past vocab_size
    Case(
        "model-tokenizer-ids-past-vocab",
        TRAIN + ["--model", "{model}"],
        "{model}/tokenizer.json: token '<|im_end|>' has id 258, outside the model's vocabulary "
        "(config.json vocab_size 200); the tokenizer does not belong to this model",
        prepare=small_vocab_model(),
    ),
    Case(
        "model-added-token-at-vocab-size",
        TRAIN + ["--model", "{model}"],
        "{model}/tokenizer.json: token '<|im_end|>' has id 258, outside the model's vocabulary "
        "(config.json vocab_size 258)",
        prepare=small_vocab_model(258),
    ),
    Case(
        "model-vocab-entry-past-vocab-size",
        TRAIN + ["--model", "{model}"],
        "{model}/tokenizer.json: token 'Ġhello' has id 600, outside the model's vocabulary (config.json vocab_size 512)",
        prepare=model(vocab_entry_past_vocab),
    ),
    Case(
        "generate-tokenizer-ids-past-vocab",
        ["generate", "--model", "{model}", "--backend", "numpy", "hi"],
        "{model}/tokenizer.json: token '<|im_end|>' has id 258, outside the model's vocabulary",
        prepare=small_vocab_model(),
    ),
    Case(
        "evaluate-tokenizer-ids-past-vocab",
        ["evaluate", "--adapter", "{run}/adapter", "--data", "{d}/train.jsonl", "--model", "{model}", "--no_generate"],
        "{model}/tokenizer.json: token '<|im_end|>' has id 258, outside the model's vocabulary",
        prepare=small_vocab_model(),
    ),
    # ------------------------------------------------------------ model: weight dtypes
    Case(
        "model-int32-weights",
        TRAIN + ["--model", "{model}"],
        "{model}/model.safetensors: tensor 'model.embed_tokens.weight' has dtype I32; base weights must be "
        "floating point (F32, F16, BF16, F64)",
        prepare=model(retype_weights("int32")),
    ),
    Case(
        "model-one-bool-tensor",
        TRAIN + ["--model", "{model}"],
        "{model}/model.safetensors: tensor 'model.norm.weight' has dtype BOOL",
        prepare=model(retype_weights("bool", only="model.norm.weight")),
    ),
    Case(
        "model-one-uint8-tensor",
        TRAIN + ["--model", "{model}"],
        "tensor 'model.layers.1.mlp.down_proj.weight' has dtype U8",
        prepare=model(retype_weights("uint8", only="model.layers.1.mlp.down_proj.weight")),
    ),
    # ------------------------------------------------------------ model: config.json consistency and values
    Case(
        "model-type-contradicts-architecture",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: model_type 'gpt2' contradicts architectures ['LlamaForCausalLM']",
        prepare=model(lambda m: edit_json(m / "config.json", model_type="gpt2")),
    ),
    Case(
        "model-two-architectures",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: unsupported architecture ['LlamaForCausalLM', 'GPT2LMHeadModel']",
        prepare=model(lambda m: edit_json(m / "config.json", architectures=["LlamaForCausalLM", "GPT2LMHeadModel"])),
    ),
    Case(
        "model-config-float-overflows-to-inf",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: key 'rms_norm_eps' must be a finite number > 0, got inf",
        prepare=model(lambda m: edit_text(m / "config.json", '"rms_norm_eps": 1e-05', '"rms_norm_eps": 1e999')),
    ),
    Case(
        "model-config-infinity-literal",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: not valid JSON: Infinity is not a JSON number",
        prepare=model(lambda m: edit_text(m / "config.json", '"rope_theta": 10000.0', '"rope_theta": Infinity')),
    ),
    Case(
        "model-config-bool-for-int",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: key 'hidden_size' must be a positive integer, got True",
        prepare=model(lambda m: edit_json(m / "config.json", hidden_size=True)),
    ),
    Case(
        "model-config-nested-too-deeply",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: JSON nested 100000 levels deep",
        prepare=model(lambda m: (m / "config.json").write_text(DEEP)),
    ),
    Case(
        "model-config-lone-surrogate",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: a string holds the lone UTF-16 surrogate \\ud83d",
        prepare=model(lambda m: edit_text(m / "config.json", '"llama"', '"llama\\ud83d"')),
    ),
    Case(
        "model-attention-bias",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: attention_bias = true is not supported (Llama-family layers have no biases)",
        prepare=model(lambda m: edit_json(m / "config.json", attention_bias=True)),
    ),
    Case(
        "model-rope-type-unsupported",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: rope type 'yarn' is not supported (supported: default, linear, llama3)",
        prepare=model(lambda m: edit_json(m / "config.json", rope_scaling={"rope_type": "yarn", "factor": 4.0})),
    ),
    Case(
        "model-pad-id-past-vocab",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: key 'pad_token_id' = 512: token ids must be integers in [0, vocab_size 512)",
        prepare=model(lambda m: edit_json(m / "config.json", pad_token_id=512)),
    ),
    Case(
        "model-odd-head-dim",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: head_dim 15 (head_dim, or hidden_size / num_attention_heads) must be even",
        prepare=model(lambda m: edit_json(m / "config.json", head_dim=15)),
    ),
    Case(
        "model-kv-heads-not-a-divisor",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: num_attention_heads (4) must be a multiple of num_key_value_heads (3)",
        prepare=model(lambda m: edit_json(m / "config.json", num_key_value_heads=3)),
    ),
    # ------------------------------------------------------------ model: files that are not files, headers
    Case(
        "model-config-fifo",
        TRAIN + ["--model", "{model}"],
        "{model}/config.json: file is a FIFO (named pipe), not a regular file",
        prepare=fifo("model/config.json"),
    ),
    Case(
        "model-tokenizer-fifo",
        TRAIN + ["--model", "{model}"],
        "{model}/tokenizer.json: file is a FIFO (named pipe), not a regular file",
        prepare=fifo("model/tokenizer.json"),
    ),
    Case(
        "model-weights-fifo",
        TRAIN + ["--model", "{model}"],
        "{model}/model.safetensors: weights file is a FIFO (named pipe), not a regular file",
        prepare=fifo("model/model.safetensors"),
    ),
    Case(
        "model-dir-symlink-loop",
        TRAIN + ["--model", "{d}/loop"],
        "{d}/loop: symlink loop",
        prepare=symlink_loop("loop"),
    ),
    Case(
        "model-unexpected-tensor",
        TRAIN + ["--model", "{model}"],
        "{model}/model.safetensors: unexpected tensor 'model.layers.0.mlp.extra_proj.weight'",
        prepare=model(add_tensor),
    ),
    Case(
        "model-header-nested-too-deeply",
        TRAIN + ["--model", "{model}"],
        "{model}/model.safetensors: JSON nested 203 levels deep",
        prepare=model(rewrite_header(deep_header)),
    ),
    Case(
        "model-header-unknown-dtype",
        TRAIN + ["--model", "{model}"],
        "has unknown dtype 'F7'",
        prepare=model(rewrite_header(lambda h: first_tensor(h).update(dtype="F7"))),
    ),
    Case(
        "model-header-length-disagrees-with-shape",
        TRAIN + ["--model", "{model}"],
        "bytes, but F32 [1] needs 4; the file is damaged",
        prepare=model(rewrite_header(lambda h: first_tensor(h).update(shape=[1]))),
    ),
    Case(
        "model-index-names-a-path-outside",
        TRAIN + ["--model", "{model}"],
        "{model}/model.safetensors.index.json: weight_map names '../train.jsonl', which is not a file in the model directory",
        prepare=model(
            lambda m: (m / "model.safetensors.index.json").write_text(
                json.dumps({"weight_map": {"a": "../train.jsonl"}})
            )
        ),
    ),
    Case(
        "model-tokenizer-config-nested-too-deeply",
        TRAIN + ["--model", "{model}"],
        "{model}/tokenizer_config.json: JSON nested 100000 levels deep",
        prepare=model(lambda m: (m / "tokenizer_config.json").write_text(DEEP)),
    ),
    Case(
        "model-tokenizer-config-lone-surrogate",
        TRAIN + ["--model", "{model}"],
        "{model}/tokenizer_config.json: a string holds the lone UTF-16 surrogate \\udead",
        prepare=model(
            lambda m: edit_text(m / "tokenizer_config.json", '"bos_token": "<|endoftext|>"', '"bos_token": "\\udead"')
        ),
    ),
    # ------------------------------------------------------------ checkpoints: complete or damaged
    Case(
        "ckpt-trainer-state-deleted",
        RESUME,
        CKPT + "/trainer_state.json: missing; checkpoint " + CKPT + " " + RESUME_FROM_HINT,
        prepare=checkpoint(lambda c: (c / "trainer_state.json").unlink()),
    ),
    Case(
        "ckpt-emptied",
        RESUME,
        CKPT + "/trainer_state.json: missing; checkpoint " + CKPT + " " + RESUME_FROM_HINT,
        prepare=checkpoint(lambda c: [p.unlink() for p in sorted(c.rglob("*"), reverse=True) if p.is_file()]),
    ),
    Case(
        "ckpt-newest-is-a-file",
        RESUME,
        "{run}/checkpoints/step-000009: not a directory; checkpoint {run}/checkpoints/step-000009 is damaged; "
        "to resume from the newest complete one instead, add --resume_from step-000004",
        prepare=lambda ctx: (ctx.run / "checkpoints/step-000009").write_text("x"),
    ),
    Case(
        "ckpt-manifest-names-a-file-outside",
        RESUME,
        "trainer_state.json: lists '../../config.yaml', which is not a file inside the checkpoint",
        prepare=checkpoint(manifest_escapes),
    ),
    Case(
        "ckpt-trainer-state-nan",
        RESUME,
        CKPT + "/trainer_state.json: not valid JSON: NaN is not a JSON number",
        prepare=checkpoint(lambda c: edit_text(c / "trainer_state.json", '"elapsed_s": ', '"elapsed_s": NaN, "was": ')),
    ),
    Case(
        "ckpt-trainer-state-nested-too-deeply",
        RESUME,
        CKPT + "/trainer_state.json: JSON nested 100000 levels deep",
        prepare=checkpoint(lambda c: (c / "trainer_state.json").write_text(DEEP)),
    ),
    Case(
        "ckpt-resume-from-unknown-step",
        RESUME + ["--resume_from", "step-000003"],
        "--resume_from step-000003: no such checkpoint in {run}/checkpoints (complete ones: step-000002, step-000004)",
    ),
    Case(
        "ckpt-resume-from-a-damaged-one",
        RESUME + ["--resume_from", "step-000002"],
        "{run}/checkpoints/step-000002/adapter/adapter_model.safetensors: checksum differs from trainer_state.json",
        prepare=lambda ctx: edit_bytes_keeping_size(
            ctx.run / "checkpoints/step-000002/adapter/adapter_model.safetensors"
        ),
    ),
    Case(
        "resume-from-without-resume", TRAIN + ["--resume_from", "step-000002"], "--resume_from needs --resume RUN_DIR"
    ),
    # ------------------------------------------------------------ generate: a prompt that is not Unicode
    Case(
        "generate-prompt-lone-surrogate",
        ["generate", "--model", "random:tiny", "--backend", "numpy", "w1 \udcff"],
        "prompt: holds the lone UTF-16 surrogate \\udcff at character 3",
    ),
]

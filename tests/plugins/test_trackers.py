"""The experiment trackers (report_to) against the real libraries, no mocks: TensorBoard event
files read back with tensorboard's own EventAccumulator, MLflow's SQLite store read back with
MlflowClient, W&B offline runs read back from the .wandb files wandb-core writes (parsed with
wandb's own protobuf classes). Each must hold exactly what metrics.jsonl holds, once per step,
also across a resume after a kill that lost the last checkpoint; the same run id must continue.

The numpy backend carries the detailed checks; the torch and jax backends run all three trackers
and the report once each."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from loraswitch.core.cli import main
from loraswitch.core.config import resolve, validate
from loraswitch.core.errors import UserError
from loraswitch.core.plugins import reset_plugin_manager
from loraswitch.core.training.engine import resume_config, train
from loraswitch.plugins import _wandb_log

ALL = ["tensorboard", "mlflow", "wandb"]
# tracker name -> (metrics.jsonl event, field): the names every tracker uses (plugins/_tracking.py)
NAMES = {
    "train/loss": ("step", "loss"),
    "train/lr": ("step", "lr"),
    "train/tokens_per_s": ("step", "tokens_per_s"),
    "train/tokens": ("step", "tokens"),
    "train/epoch": ("step", "epoch"),
    "eval/loss": ("eval", "eval_loss"),
    "eval/tokens": ("eval", "eval_tokens"),
}
WALL_CLOCK = {"train/tokens_per_s"}  # differs between a first attempt at a step and its replay


def write_data(path: Path, n: int = 30) -> Path:
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = (int(x) for x in rng.integers(0, 10, 2))
            f.write(json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) + "\n")
    return path


def tracker_env(mp: pytest.MonkeyPatch, root: Path, cache: Path) -> None:
    """No network and nothing written outside ``root``: W&B offline, MLflow's default store (in the run directory)."""
    import os

    for key in list(os.environ):
        if key.startswith(("LORASWITCH_", "WANDB_", "MLFLOW_")):
            mp.delenv(key)
    mp.setenv("LORASWITCH_CACHE", str(cache))
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        mp.setenv(name, str(root / "wandb-home"))
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mp.setenv("DO_NOT_TRACK", "true")


def numpy_config(root: Path, **kw):
    values = dict(
        backend="numpy",
        model="random:tiny",
        data=str(write_data(root / "train.jsonl")),
        output_dir=str(root / "run"),
        batch_size=2,
        accumulation_steps=3,
        n_steps=6,
        eval_every=3,
        save_every=2,
        learning_rate_multiplier=0.02,
        lora_r=4,
        report_to=ALL,
    )
    values.update(kw)
    return resolve(None, values, environ={})


def metrics_by_name(run_dir: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl as {tracker name: {step: value}}."""
    out: dict[str, dict[int, float]] = {name: {} for name in NAMES}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for name, (event, key) in NAMES.items():
            if record["event"] == event:
                out[name][record["step"]] = record[key]
    return out


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A numpy run logged to all three trackers: 6 steps (checkpoints at 4 and 6), then the
    checkpoint of step 6 is removed -- as if killed after step 6 before that checkpoint was
    complete -- and the run is resumed from step 4 to 8, so steps 5 and 6 are trained twice."""
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        tracker_env(mp, root, tmp_path_factory.getbasetemp() / "cache")
        reset_plugin_manager()
        run_dir = root / "run"
        train(numpy_config(root), quiet=True)
        first = SimpleNamespace(
            metrics=metrics_by_name(run_dir), ids=json.loads((run_dir / "trackers.json").read_text())
        )
        shutil.rmtree(run_dir / "checkpoints" / "step-000006")
        summary = train(resume_config(run_dir, {"n_steps": 8}, quiet=True), resume=True, quiet=True)
        reset_plugin_manager()
    assert summary["steps"] == 8
    return SimpleNamespace(run=run_dir, first=first, metrics=metrics_by_name(run_dir), summary=summary)


def assert_tracked(stored: dict[str, list[tuple[int, float]]], metrics, *, first=None, replayed=(), float32=False):
    """Each metric once per step, with metrics.jsonl's value (float32 for TensorBoard); for the
    ``replayed`` steps the wall-clock values are the first attempt's (``first``)."""
    for name, expected in metrics.items():
        steps = [step for step, _ in stored.get(name, [])]
        assert steps == sorted(set(steps)), f"{name}: a step appears twice: {steps}"
        assert steps == sorted(expected), f"{name}: steps {steps}, metrics.jsonl has {sorted(expected)}"
        for step, value in stored[name]:
            want = first[name][step] if name in WALL_CLOCK and step in replayed else expected[step]
            assert value == (np.float32(want) if float32 else want), f"{name} at step {step}"


# ---------------------------------------------------------------- TensorBoard


def tensorboard_scalars(run_dir: Path) -> tuple[object, dict[str, list[tuple[int, float]]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    scalars = {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
    return accumulator, scalars


def test_tensorboard_holds_each_step_once_with_the_resumed_values(tracked):
    _, scalars = tensorboard_scalars(tracked.run)
    # purge_step: the resumed run's steps 5 and 6 replace the first attempt's, wall clock included
    assert_tracked(scalars, tracked.metrics, float32=True)
    assert len(list((tracked.run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one log dir, two sessions


def test_tensorboard_has_the_config_as_hparams_and_the_summary_as_text(tracked):
    # The accumulator TensorBoard's own server reads with: it purges text summaries too on resume.
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    accumulator = EventAccumulator(str(tracked.run / "tensorboard"), size_guidance={"tensors": 0})
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    config = yaml.safe_load((tracked.run / "config.yaml").read_text())
    assert hparams["lora_r"].number_value == config["lora_r"] == 4
    assert hparams["model"].string_value == "random:tiny"
    assert hparams["packing"].bool_value is False
    assert json.loads(hparams["report_to"].string_value) == ALL
    (summary_text,) = accumulator.Tensors("run/summary")  # the first attempt's (step 6) was purged
    text = tensor_util.make_ndarray(summary_text.tensor_proto).item().decode()
    assert summary_text.step == 8 and "| stop_reason | n_steps |" in text and "| steps | 8 |" in text


# ---------------------------------------------------------------- MLflow


def mlflow_run(run_dir: Path, tracking_uri: str | None = None):
    from mlflow import MlflowClient

    ids = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri or ids["tracking_uri"])
    stored = {name: sorted((m.step, m.value) for m in client.get_metric_history(ids["run_id"], name)) for name in NAMES}
    return client.get_run(ids["run_id"]), stored


def test_mlflow_continues_one_run_without_logging_a_step_twice(tracked):
    assert tracked.first.ids["mlflow"]["tracking_uri"] == f"sqlite:///{tracked.run.resolve()}/mlflow.db"
    run, stored = mlflow_run(tracked.run)
    assert run.info.run_id == tracked.first.ids["mlflow"]["run_id"]
    # steps 5 and 6 were stored by the first attempt; deterministic resume gave the same numbers
    assert_tracked(stored, tracked.metrics, first=tracked.first.metrics, replayed=(5, 6))
    assert run.info.status == "FINISHED" and run.info.run_name == "run"


def test_mlflow_has_the_config_as_params_and_the_summary_as_tags(tracked):
    run, _ = mlflow_run(tracked.run)
    config = yaml.safe_load((tracked.run / "config.yaml").read_text())
    assert run.data.params["lora_r"] == "4" and run.data.params["model"] == "random:tiny"
    assert run.data.params["n_steps"] == "6"  # params are the first run's; MLflow forbids changing them
    assert json.loads(run.data.params["lora_target_modules"]) == config["lora_target_modules"]
    assert set(run.data.params) == set(config)
    assert run.data.tags["summary.stop_reason"] == "n_steps" and run.data.tags["summary.steps"] == "8"
    assert float(run.data.tags["summary.final_eval_loss"]) == tracked.summary["final_eval_loss"]


# ---------------------------------------------------------------- W&B (offline)


def wandb_segments(run_dir: Path) -> tuple[str, list[Path]]:
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]["run_id"]
    return run_id, _wandb_log.run_files(run_dir / "wandb", run_id)


def wandb_updates(path: Path, record_type: str) -> dict:
    """The config or summary updates of one .wandb file, later ones winning."""
    out = {}
    for record in _wandb_log.records(path):
        if record.WhichOneof("record_type") == record_type:
            for item in getattr(record, record_type).update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def test_wandb_offline_resumes_the_same_run_id_without_a_step_twice(tracked):
    run_id, segments = wandb_segments(tracked.run)
    assert run_id == tracked.first.ids["wandb"]["run_id"] and tracked.first.ids["wandb"]["mode"] == "offline"
    assert [p.parent.name.startswith("offline-run-") for p in segments] == [True, True]  # one per process
    stored: dict[str, list[tuple[int, float]]] = {}
    for path in segments:
        for row in _wandb_log.history(path):
            for name in NAMES:
                if name in row:
                    stored.setdefault(name, []).append((row["_step"], row[name]))
    assert_tracked(stored, tracked.metrics, first=tracked.first.metrics, replayed=(5, 6))
    # the second process logged only what the first had not: steps 7 and 8
    assert {row["_step"] for row in _wandb_log.history(segments[1])} == {7, 8}


def test_wandb_has_the_config_and_the_summary(tracked):
    _, segments = wandb_segments(tracked.run)
    config = yaml.safe_load((tracked.run / "config.yaml").read_text())
    logged = wandb_updates(segments[0], "config")
    assert {k: logged[k] for k in config} == {**config, "n_steps": 6}
    assert wandb_updates(segments[1], "config")["n_steps"] == 8  # the resumed budget
    summary = wandb_updates(segments[1], "summary")
    assert summary["stop_reason"] == "n_steps" and summary["steps"] == 8
    assert summary["timings.train_s"] == tracked.summary["timings"]["train_s"]


def test_trackers_json_keeps_every_id_across_the_resume(tracked):
    assert json.loads((tracked.run / "trackers.json").read_text()) == tracked.first.ids
    assert set(tracked.first.ids) == set(ALL)


# ---------------------------------------------------------------- choosing trackers


@pytest.fixture
def numpy_env(tmp_path, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        tracker_env(mp, tmp_path, tmp_path_factory.getbasetemp() / "cache")
        reset_plugin_manager()
        yield mp
        reset_plugin_manager()


@pytest.mark.parametrize(
    "given, chosen",
    [("tensorboard", ["tensorboard"]), ("wandb, mlflow", ["wandb", "mlflow"]), ([], ["none"]), (["none"], ["none"])],
)
def test_report_to_takes_a_list_or_comma_separated_names(given, chosen):
    assert validate({"report_to": given}).report_to == chosen


@pytest.mark.parametrize(
    "given, message",
    [(["none", "wandb"], "cannot be combined"), (["tensorbord"], "report_to.0 = 'tensorbord': Input should be")],
)
def test_report_to_rejects_bad_names_in_one_line(given, message):
    with pytest.raises(UserError, match=message):
        validate({"report_to": given})


def test_a_missing_tracker_package_is_one_line_before_the_run_is_touched(tmp_path, numpy_env, monkeypatch, capsys):
    config = numpy_config(tmp_path, report_to=["none"], n_steps=2)
    train(config, quiet=True)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails as if not installed
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({**config.model_dump(), "report_to": ["tensorboard", "wandb"]}))
    code = main(["train", str(config_file), "--overwrite", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err
        == "error: report_to: wandb needs wandb, which is not installed; install it with: pip install 'loraswitch[wandb]'\n"
    )
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before  # --overwrite did not clear the run


def test_report_to_none_writes_no_tracker_files_and_overwrite_removes_old_ones(tmp_path, numpy_env):
    run_dir = tmp_path / "run"
    train(numpy_config(tmp_path, report_to=["none"], n_steps=2), quiet=True)
    leftovers = ["trackers.json", "tensorboard", "mlflow.db", "wandb", "samples.json", "report.html"]
    assert not any((run_dir / name).exists() for name in leftovers)
    for name in leftovers:  # as a tracked quickstart run would leave them
        (run_dir / name).mkdir() if "." not in name else (run_dir / name).write_text("{}")
    train(numpy_config(tmp_path, report_to=["none"], n_steps=2), overwrite=True, quiet=True)
    assert not any((run_dir / name).exists() for name in leftovers)


# ---------------------------------------------------------------- torch and jax


@pytest.fixture(scope="module")
def framework_runs(tracked, tmp_path_factory):
    """The same config trained on torch and on jax (tiny random Llama, 2 steps), all three trackers on."""
    root = tmp_path_factory.mktemp("frameworks")
    # One MLflow store for both: a copy of the numpy run's, whose schema exists already (creating
    # a SQLite store runs MLflow's schema migrations, seconds each time).
    shutil.copy(tracked.run / "mlflow.db", root / "mlflow.db")
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        tracker_env(mp, root, tmp_path_factory.getbasetemp() / "cache")
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        for backend in ("torch", "jax"):
            reset_plugin_manager()
            (root / backend).mkdir()
            kw = dict(backend=backend, accumulation_steps=1, n_steps=2, eval_every=2, save_every=2, max_seq_len=32)
            train(numpy_config(root / backend, **kw), quiet=True)
            runs[backend] = root / backend / "run"
        reset_plugin_manager()
    return runs


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_three_trackers_hold_the_metrics_on_a_framework_backend(backend, framework_runs):
    run_dir = framework_runs[backend]
    metrics = metrics_by_name(run_dir)
    assert sorted(metrics["train/loss"]) == [1, 2] and sorted(metrics["eval/loss"]) == [2]
    assert_tracked(tensorboard_scalars(run_dir)[1], metrics, float32=True)
    run, stored = mlflow_run(run_dir)
    assert_tracked(stored, metrics)
    assert run.data.params["backend"] == backend and run.info.status == "FINISHED"
    _, (segment,) = wandb_segments(run_dir)
    rows = _wandb_log.history(segment)
    assert_tracked({name: [(r["_step"], r[name]) for r in rows if name in r] for name in NAMES}, metrics)


def test_the_report_overlays_the_torch_and_jax_runs(framework_runs, tmp_path):
    from loraswitch.core.report import write_report

    out = write_report([framework_runs["torch"], framework_runs["jax"]], tmp_path / "compare.html")
    html = out.read_text()
    assert html.count("<svg") == 4 and "torch/run: train loss" in html and "jax/run: eval loss" in html
    # the differing keys: backend (and output_dir, which is left out as always different)
    differ = html.split("Keys that differ")[1].split("All keys")[0]
    assert ">backend<" in differ and ">torch<" in differ and ">jax<" in differ and "output_dir" not in differ

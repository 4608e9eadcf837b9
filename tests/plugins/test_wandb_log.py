"""plugins/_wandb_log.py reads back what wandb-core itself writes: an offline run long enough that
records cross the file's 32 KiB blocks, with one record (a 100 KB config value) split into
first, middle and last pieces. A file cut short by a kill reads up to the cut."""

from __future__ import annotations

import pytest

from loraswitch.plugins import _wandb_log

STEPS = 600


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    import wandb

    root = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            mp.setenv(name, str(root / "home"))
        run = wandb.init(project="test", dir=str(root), reinit="create_new", settings=wandb.Settings(console="off"))
        run.config.update({"big": "x" * 100_000})
        for step in range(1, STEPS + 1):
            run.log({"train/loss": 1.0 / step, "train/lr": step * 1e-6}, step=step)
        run.finish()
    (path,) = _wandb_log.run_files(root / "wandb", run.id)
    return path


def test_every_row_comes_back_across_block_boundaries(offline_run):
    assert offline_run.stat().st_size > 2 * _wandb_log.BLOCK
    rows = _wandb_log.history(offline_run)
    assert [r["_step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["train/loss"] == 1.0 / r["_step"] and r["train/lr"] == r["_step"] * 1e-6 for r in rows)
    assert _wandb_log.last_steps([offline_run]) == {"train/loss": STEPS, "train/lr": STEPS}


def test_a_record_larger_than_a_block_is_put_back_together(offline_run):
    configs = [r.config for r in _wandb_log.records(offline_run) if r.WhichOneof("record_type") == "config"]
    assert any(item.key == "big" and item.value_json == '"' + "x" * 100_000 + '"' for c in configs for item in c.update)


def test_a_file_cut_by_a_kill_reads_up_to_the_cut(offline_run, tmp_path):
    cut = tmp_path / offline_run.name
    data = offline_run.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    steps = [r["_step"] for r in _wandb_log.history(cut)]
    assert 0 < len(steps) < STEPS and steps == list(range(1, len(steps) + 1))


def test_another_file_is_refused(tmp_path):
    (tmp_path / "x.wandb").write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="not a W&B run file"):
        list(_wandb_log.raw_records(tmp_path / "x.wandb"))

"""core.training.parallel and the engine's multi-process rules, framework-free: the numpy backend with a
stand-in communicator plays one process of a larger run. (The real thing, torch on 2 processes:
tests/backends/torch/test_distributed.py.)"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from loraswitch.core import hookimpl
from loraswitch.core.config import resolve
from loraswitch.core.errors import UserError
from loraswitch.core.plugins import get_plugin_manager, reset_plugin_manager
from loraswitch.core.training import parallel
from loraswitch.core.training.engine import train
from loraswitch.core.types import IGNORE_INDEX, Batch


def batch(rows: int, length: int = 5) -> Batch:
    ids = np.arange(rows * length, dtype=np.int32).reshape(rows, length)
    return Batch(ids, np.ones_like(ids), np.where(ids % 2 == 0, ids, IGNORE_INDEX).astype(np.int32))


def test_shard_rows_gives_contiguous_blocks_that_cover_the_batch():
    b = batch(8)
    shards = [parallel.shard_rows(b, r, 4) for r in range(4)]
    assert [s.input_ids.shape for s in shards] == [(2, 5)] * 4
    np.testing.assert_array_equal(np.concatenate([s.input_ids for s in shards]), b.input_ids)
    np.testing.assert_array_equal(np.concatenate([s.labels for s in shards]), b.labels)
    assert sum(s.n_targets for s in shards) == b.n_targets
    assert parallel.shard_rows(b, 0, 1) is b
    with pytest.raises(ValueError):
        parallel.shard_rows(batch(6), 0, 4)


def test_batch_size_must_divide_by_the_data_parallel_size():
    parallel.check_divisible(8, 4)
    parallel.check_divisible(3, 1)
    with pytest.raises(
        UserError, match=r"^batch_size: 6 does not divide by the data-parallel size 4; .*multiple of 4$"
    ):
        parallel.check_divisible(6, 4)


@pytest.mark.parametrize(
    "mesh, n, expected",
    [(None, 4, (4, 1)), ({"fsdp": 4}, 4, (1, 4)), ({"data": 2, "fsdp": 2}, 4, (2, 2)), ({"data": 1}, 1, (1, 1))],
)
def test_mesh_sizes(mesh, n, expected):
    assert parallel.mesh_sizes(mesh, n) == expected


@pytest.mark.parametrize(
    "mesh, message",
    [
        ({"tensor": 2}, r"^mesh: unknown axis 'tensor'"),
        ({"data": 0}, r"^mesh: data = 0; each axis size must be a positive integer$"),
        (
            {"data": 2, "fsdp": 2},
            r"^mesh: \{data: 2, fsdp: 2\} spans 4 devices but this run has 2; make data x fsdp equal 2",
        ),
    ],
)
def test_bad_mesh_is_one_line(mesh, message):
    with pytest.raises(UserError, match=message):
        parallel.mesh_sizes(mesh, 2)


def test_is_main_process_reads_the_active_communicator_then_rank(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    parallel.activate(None)
    assert not parallel.is_main_process()
    parallel.activate(FakeCommunicator(rank=0, world_size=2))
    try:
        assert parallel.is_main_process()
    finally:
        parallel.activate(None)
    monkeypatch.delenv("RANK")
    assert parallel.is_main_process()


# ---------------------------------------------------------------- the engine as one of several processes


class FakeCommunicator:
    """One process of a ``world_size`` run whose peers are imagined: barriers return at once and
    ``any_true`` reports a peer's stop request from step ``peer_stops_at`` on."""

    def __init__(self, rank: int, world_size: int, peer_stops_at: int | None = None):
        self.rank, self.world_size, self.data_parallel_size = rank, world_size, world_size
        self.peer_stops_at = peer_stops_at
        self.barriers = 0
        self.step = 0

    def barrier(self) -> None:
        self.barriers += 1

    def any_true(self, flag: bool) -> bool:
        return flag or (self.peer_stops_at is not None and self.step >= self.peer_stops_at)


class Plugin:
    """Registers backend "numpy-ranked" (the numpy backend with ``comm`` as its communicator)
    and records the observer hooks it receives."""

    def __init__(self, comm: FakeCommunicator):
        self.comm, self.hooks = comm, []

    @hookimpl
    def register_backends(self, register):
        from loraswitch_numpy.backend import NumpyBackend

        comm = self.comm

        class Ranked(NumpyBackend):
            name = "numpy-ranked"
            communicator = comm

            def micro_step(self, micro):
                comm.step = micro.step + 1 if micro.apply_update else comm.step
                return super().micro_step(micro)

        register("numpy-ranked", Ranked)

    @hookimpl
    def on_step_end(self, run, metrics):
        self.hooks.append("step")

    @hookimpl
    def on_checkpoint(self, run, step, path):
        self.hooks.append("checkpoint")


@pytest.fixture
def plugins(tmp_path_factory, monkeypatch):
    pytest.importorskip("loraswitch_numpy", reason="pip install -e examples/loraswitch-numpy")
    for key in list(os.environ):
        if key.startswith("LORASWITCH_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("LORASWITCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    reset_plugin_manager()
    yield get_plugin_manager()
    reset_plugin_manager()
    parallel.activate(None)


def run_as(plugins, tmp_path, comm: FakeCommunicator, **kw):
    data = tmp_path / "train.jsonl"
    rng = np.random.default_rng(0)
    data.write_text(
        "".join(
            json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) + "\n"
            for a, b in rng.integers(0, 10, (30, 2)).tolist()
        )
    )
    plugin = Plugin(comm)
    plugins.register(plugin, name="ranked")
    values = dict(
        backend="numpy-ranked",
        model="random:tiny",
        data=str(data),
        output_dir=str(tmp_path / "run"),
        batch_size=2,
        accumulation_steps=2,
        n_steps=4,
        eval_every=2,
        save_every=2,
        lora_r=4,
    )
    values.update(kw)
    return train(resolve(None, values, environ={}), quiet=True), plugin


def test_a_process_other_than_rank_0_writes_nothing(plugins, tmp_path):
    comm = FakeCommunicator(rank=1, world_size=2)
    summary, plugin = run_as(plugins, tmp_path, comm)
    assert summary["steps"] == 4 and summary["stop_reason"] == "n_steps"
    assert not (tmp_path / "run").exists()
    assert plugin.hooks == []
    assert comm.barriers >= 2 + 2  # after setup, after each of the 2 checkpoints, at the end


def test_rank_0_writes_the_run_and_waits_after_each_checkpoint(plugins, tmp_path):
    comm = FakeCommunicator(rank=0, world_size=2)
    summary, plugin = run_as(plugins, tmp_path, comm)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert (run / "summary.json").exists() and (run / "adapter").is_dir()
    assert plugin.hooks.count("step") == 4 and plugin.hooks.count("checkpoint") == 2
    assert comm.barriers == 1 + 2 + 1


def test_a_stop_request_on_another_process_stops_this_one(plugins, tmp_path):
    comm = FakeCommunicator(rank=0, world_size=2, peer_stops_at=3)
    summary, _ = run_as(plugins, tmp_path, comm, n_steps=10, save_every=10)
    assert summary["stop_reason"] == "interrupted" and summary["steps"] == 3
    assert (tmp_path / "run" / "checkpoints" / "step-000003").is_dir()


def test_the_engine_checks_batch_size_against_the_data_parallel_size(plugins, tmp_path):
    with pytest.raises(UserError, match=r"^batch_size: 2 does not divide by the data-parallel size 4"):
        run_as(plugins, tmp_path, FakeCommunicator(rank=0, world_size=4))

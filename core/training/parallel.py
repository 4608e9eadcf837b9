"""One run over several processes or devices, trained exactly as on one.

The rules every backend follows (the README and docs/distributed.md state them for users):

- ``batch_size`` x ``accumulation_steps`` is the *global* number of examples per optimizer step,
  whatever the number of devices. Every process builds the same global micro-batches from the
  same split and the same order; a backend gives data-parallel rank r the contiguous block of
  rows ``shard_rows`` picks. So ``batch_size`` must divide by the data-parallel size.
- The loss weight stays 1 / targets in the *global* window. Each rank's gradient is then its
  share of the window's token mean and the ranks' gradients are *summed* (not averaged), which
  gives the single-device gradient exactly (up to summation order).
- Only the main process (rank 0) writes the run directory and calls the observer plugins; every
  rank waits at a barrier after a checkpoint is written, so none reads a half-written one.
- A stop request (Ctrl-C, SIGTERM) seen by any rank stops every rank at the same step.

Backends that train on several processes expose a ``communicator`` attribute after ``load``
(see ``Communicator``); a backend without one is a single process. Nothing here imports a
framework.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Protocol

from loraswitch.core.errors import UserError
from loraswitch.core.types import Batch

MESH_AXES = ("data", "fsdp")


class Communicator(Protocol):
    """What the engine needs from a backend that spans several processes."""

    rank: int  # this process, 0 = main
    world_size: int  # processes
    data_parallel_size: int  # ways each global micro-batch is split

    def barrier(self) -> None:
        """Return when every process has called it."""

    def any_true(self, flag: bool) -> bool:
        """True on every process if ``flag`` is True on any (one small collective)."""


class SingleProcess:
    rank = 0
    world_size = 1
    data_parallel_size = 1

    def barrier(self) -> None:
        pass

    def any_true(self, flag: bool) -> bool:
        return bool(flag)


_active: Communicator | None = None


def communicator_of(backend: Any) -> Communicator:
    """The loaded backend's communicator, or a single process."""
    comm = getattr(backend, "communicator", None)
    return comm if comm is not None else SingleProcess()


def activate(comm: Communicator | None) -> None:
    """Make ``comm`` the one ``is_main_process`` consults (the engine does this after load)."""
    global _active
    _active = comm


def process_rank() -> int:
    """This process's rank: the active communicator's, else torchrun's ``RANK`` or a JAX
    multi-host launch's ``JAX_PROCESS_ID`` (known before the backend has loaded), else 0."""
    if _active is not None:
        return _active.rank
    try:
        return int(os.environ.get("RANK") or os.environ.get("JAX_PROCESS_ID") or "0")
    except ValueError:
        return 0


def is_main_process() -> bool:
    """Only the main process prints run messages and writes files."""
    return process_rank() == 0


def mesh_sizes(
    mesh: dict[str, int] | None, n_devices: int, *, unit: str = "devices", hint: str = ""
) -> tuple[int, int]:
    """(data, fsdp) for config ``mesh`` over ``n_devices``; null means all data-parallel.
    Both axes split the batch (FSDP is data-parallel with sharded weights), so the
    data-parallel size is their product, which must be ``n_devices``. ``hint`` ends the error."""
    if mesh is None:
        return n_devices, 1
    unknown = [k for k in mesh if k not in MESH_AXES]
    if unknown:
        raise UserError(f"mesh: unknown axis {unknown[0]!r}; the axes are {', '.join(MESH_AXES)}")
    for key, value in mesh.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"mesh: {key} = {value!r}; each axis size must be a positive integer")
    data, fsdp = mesh.get("data", 1), mesh.get("fsdp", 1)
    if data * fsdp != n_devices:
        shown = "{" + ", ".join(f"{k}: {v}" for k, v in mesh.items()) + "}"
        raise UserError(
            f"mesh: {shown} spans {data * fsdp} {unit} but this run has {n_devices}; make data x fsdp "
            f"equal {n_devices}, or set mesh: null (all data-parallel){hint}"
        )
    return data, fsdp


def check_divisible(batch_size: int, data_parallel_size: int) -> None:
    """batch_size is global; every data-parallel rank gets the same number of rows."""
    if data_parallel_size > 1 and batch_size % data_parallel_size:
        raise UserError(
            f"batch_size: {batch_size} does not divide by the data-parallel size "
            f"{data_parallel_size}; batch_size is global (all devices together), so choose "
            f"a multiple of {data_parallel_size}"
        )


def row_block(n_rows: int, rank: int, world: int) -> slice:
    """The contiguous rows of data-parallel rank ``rank`` (``n_rows`` divides by ``world``)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    if n_rows % world:
        raise ValueError(f"{n_rows} rows do not divide among {world} ranks")
    per = n_rows // world
    return slice(rank * per, (rank + 1) * per)


def shard_rows(batch: Batch, rank: int, world: int) -> Batch:
    """Rank ``rank``'s contiguous block of a global micro-batch (the batch itself when world is 1).
    Sequence length is kept, so every rank runs the same shapes."""
    if world == 1:
        return batch
    rows = row_block(batch.input_ids.shape[0], rank, world)
    return replace(
        batch,
        input_ids=batch.input_ids[rows],
        attention_mask=batch.attention_mask[rows],
        labels=batch.labels[rows],
        segment_ids=None if batch.segment_ids is None else batch.segment_ids[rows],
        position_ids=None if batch.position_ids is None else batch.position_ids[rows],
    )

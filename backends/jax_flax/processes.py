"""Several hosts training one run: ``jax.distributed.initialize`` and the core's Communicator.

One process per host sees that host's devices; once the processes have met, ``jax.devices()``
lists every device of every host and one jitted program spans them all (sharding.py). The
launch is the same command on every host, with the coordinator in the environment:

  JAX_COORDINATOR_ADDRESS=HOST0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0|1 loraswitch train ...

``LORASWITCH_JAX_DISTRIBUTED=1`` without those lets jax detect the cluster itself (Slurm, Open
MPI, Cloud TPU). Neither set: one process, which may still drive every device of its host.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from loraswitch.core.errors import UserError

SWITCH = "LORASWITCH_JAX_DISTRIBUTED"
_INT_VARS = ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def requested() -> bool:
    """The environment asks for a multi-process run."""
    switch = os.environ.get(SWITCH, "").strip().lower()
    if switch not in ("", "0", "1", "true", "false"):
        raise UserError(f"{SWITCH}={os.environ[SWITCH]!r}: expected 1 or 0")
    return switch in ("1", "true") or bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r}: expected an integer") from None


def _already_initialized() -> bool:
    check = getattr(jax.distributed, "is_initialized", None)
    if check is not None:
        return bool(check())
    from jax._src import distributed as _distributed  # jax versions before is_initialized()

    return _distributed.global_state.client is not None


def initialize() -> None:
    """Join the other processes if the environment asks for it (idempotent). Must run before
    anything touches a jax device, which is why the backend calls it first in ``load``."""
    if not requested() or _already_initialized():
        return
    num_processes, process_id = (_env_int(name) for name in _INT_VARS)
    address = os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    try:
        jax.distributed.initialize(coordinator_address=address, num_processes=num_processes, process_id=process_id)
    except (RuntimeError, ValueError, TypeError) as e:
        raise UserError(
            f"jax.distributed.initialize (JAX_COORDINATOR_ADDRESS={address}, JAX_NUM_PROCESSES="
            f"{num_processes}, JAX_PROCESS_ID={process_id}): {str(e).splitlines()[0]}"
        ) from e


class JaxCommunicator:
    """The core's Communicator (core/training/parallel.py) over jax's processes. ``data_parallel_size``
    counts devices, not processes: every device gets its own rows of each micro-batch."""

    def __init__(self, data_parallel_size: int):
        self.rank = jax.process_index()
        self.world_size = jax.process_count()
        self.data_parallel_size = data_parallel_size
        self._barriers = 0

    def barrier(self) -> None:
        if self.world_size == 1:
            return
        from jax.experimental import multihost_utils

        self._barriers += 1  # every process calls barriers in the same order, so the names agree
        multihost_utils.sync_global_devices(f"loraswitch-barrier-{self._barriers}")

    def any_true(self, flag: bool) -> bool:
        if self.world_size == 1:
            return bool(flag)
        from jax.experimental import multihost_utils

        return bool(np.asarray(multihost_utils.process_allgather(np.int32(1 if flag else 0))).any())

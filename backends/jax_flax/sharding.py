"""Where the jax backend's arrays live on the device mesh (config ``mesh``: data and fsdp axes).

One jitted program runs over every device (SPMD); the arrays' shardings say what each device
holds and XLA's partitioner inserts the collectives:

- the rows of each global micro-batch are split over *all* devices (data x fsdp: FSDP is data
  parallel with sharded weights), so ``batch_size`` must divide by the device count;
- every frozen base matrix (stacked layer kernels, embedding, untied lm_head) is split along its
  largest dimension over ``fsdp`` and repeated over ``data``: a model F times larger than one
  device fits, and each layer's weights are all-gathered when the layer scan reaches them;
- the LoRA weights and the optimizer state are replicated (they are small): the loss is a sum
  over all rows, so its gradient arrives summed over devices — the single-device gradient — and
  a checkpoint is whole arrays, whatever the device count.

Arrays are placed with ``jax.make_array_from_callback``: each process builds only the shards of
its own devices, from data every process holds (the global batch) or reads (a weight file).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from loraswitch.core.training.parallel import mesh_sizes
from loraswitch.core.types import IGNORE_INDEX, Batch

ROWS = ("data", "fsdp")  # the batch axis is split over both mesh axes


@dataclass(frozen=True)
class Layout:
    """The mesh and the shardings the backend uses on it (hashable: part of the jit cache key)."""

    mesh: Mesh

    @property
    def data(self) -> int:
        return self.mesh.shape["data"]

    @property
    def fsdp(self) -> int:
        return self.mesh.shape["fsdp"]

    @property
    def size(self) -> int:
        """Devices, which is also the data-parallel size: every device gets its own rows."""
        return self.data * self.fsdp

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def rows(self) -> NamedSharding:
        """[B, ...] arrays: contiguous blocks of rows, device (d, f) holding block d * fsdp + f,
        the block ``core.training.parallel.shard_rows`` gives rank d * fsdp + f."""
        return NamedSharding(self.mesh, P(ROWS))

    def weight(self, shape: tuple[int, ...], *, stacked: bool) -> NamedSharding:
        """A frozen matrix split over fsdp along its largest dimension that fsdp divides (never
        the leading layer axis of a stacked kernel, which the scan slices); replicated if none
        does, or for vectors (norm scales)."""
        first = 1 if stacked else 0
        if self.fsdp == 1 or len(shape) - first < 2:
            return self.replicated
        dims = [i for i in range(first, len(shape)) if shape[i] % self.fsdp == 0]
        if not dims:
            return self.replicated
        dim = max(dims, key=lambda i: (shape[i], -i))
        spec = [None] * len(shape)
        spec[dim] = "fsdp"
        return NamedSharding(self.mesh, P(*spec))

    def describe(self) -> str:
        if self.size == 1:
            return "none"
        if self.fsdp == 1:
            return f"data x{self.data}"
        return f"fsdp x{self.fsdp}" if self.data == 1 else f"data {self.data} x fsdp {self.fsdp}"


def make_layout(mesh: dict[str, int] | None, devices: list | None = None) -> Layout:
    """Config ``mesh`` over ``devices`` (default: every device of every process), checked.

    Devices are in ``jax.devices()`` order (process by process), so the fsdp groups, which
    exchange the most data (weight all-gathers), are neighbouring devices of one host when
    fsdp divides the devices per host."""
    devices = list(jax.devices() if devices is None else devices)
    hint = f" (jax sees {len(devices)} device(s): {_device_summary(devices)})"
    data, fsdp = mesh_sizes(mesh, len(devices), hint=hint)
    grid = np.array(devices, dtype=object).reshape(data, fsdp)
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is None:  # older jax: every axis is what later versions call Auto
        return Layout(Mesh(grid, ("data", "fsdp")))
    # Auto: the partitioner propagates shardings from the placed arrays and the pins below
    # (Explicit axes would make every op's sharding part of its type).
    return Layout(Mesh(grid, ("data", "fsdp"), axis_types=(axis_type.Auto, axis_type.Auto)))


def inference_layout(mesh: dict[str, int] | None) -> Layout:
    """The run's ``mesh`` if it fits the devices here, else one that does: inference
    (``loraswitch evaluate`` / ``generate`` of a run trained elsewhere) has no arithmetic tied to
    the layout, and a model that needed sharded weights still gets them, over every device."""
    if mesh:
        span = math.prod(v for v in mesh.values() if isinstance(v, int))
        if span != jax.device_count():
            mesh_sizes(mesh, span)  # still a user error if an axis name or size is wrong
            mesh = {"fsdp": jax.device_count()} if mesh.get("fsdp", 1) > 1 else None
    return make_layout(mesh)


def _device_summary(devices: list) -> str:
    kinds = sorted({f"{d.platform}" for d in devices})
    hosts = len({d.process_index for d in devices})
    return ", ".join(kinds) + (f" on {hosts} processes" if hosts > 1 else "")


# ---------------------------------------------------------------- frozen weights gathered where read


class GatheredParam(nnx.Param):
    """A frozen base weight stored sharded over fsdp that is whole wherever the model reads it.

    Reading it (``param[...]``, inside the jitted step) pins the value replicated, so XLA
    all-gathers it there: inside the layer scan, one layer's weights at a time, as FSDP/ZeRO-3
    does. Without the pin the partitioner is free to keep the weight sharded and move the
    activations instead (all-gathering the whole batch's hidden states into every device), which
    is right but no longer data parallel. Flax's way to change what a read returns: a Variable
    type overriding ``get_value``."""

    def get_value(self, **kwargs):
        value = super().get_value(**kwargs)
        whole = self.get_metadata().get("whole")
        return value if whole is None else jax.lax.with_sharding_constraint(value, whole)


def gather_where_read(module: nnx.Module, layout: Layout) -> None:
    """Turn every frozen ``nnx.Param`` of ``module`` (not the LoRA weights) into a
    ``GatheredParam`` (in place; nothing to do without fsdp)."""
    if layout.fsdp == 1:
        return
    found = [(path, var) for path, var in nnx.iter_graph(module) if type(var) is nnx.Param]
    for path, var in found:
        parent = module
        for key in path[:-1]:
            parent = parent[key] if isinstance(parent, (dict, list, tuple)) else getattr(parent, key)
        setattr(parent, path[-1], GatheredParam(var.get_value(), whole=layout.replicated))


# ---------------------------------------------------------------- placing arrays


def put(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array that every process holds whole, as a global array: each process copies
    only the shards of its own devices."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def put_from(
    shape: tuple[int, ...], sharding: NamedSharding, read: Callable[[tuple[slice, ...]], np.ndarray]
) -> jax.Array:
    """A global array whose shards are read on demand (``read(index)`` returns the block at
    ``index``): the whole array never exists on a device or, unless ``read`` builds it, on the host.
    A block several devices hold (replicas over ``data``) is read once."""
    blocks: dict[tuple, np.ndarray] = {}

    def block(index):
        index = _full(index, shape)
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in blocks:
            blocks[key] = np.asarray(read(index))
        return blocks[key]

    return jax.make_array_from_callback(tuple(shape), sharding, block)


def _full(index: tuple, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``index`` with explicit bounds on every axis (callbacks may get ``slice(None)``)."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    return tuple(slice(*s.indices(n)) for s, n in zip(index, shape))


def replicate(tree: Any, layout: Layout) -> Any:
    """Every leaf of ``tree`` (host or single-device arrays) replicated over the mesh."""
    return jax.tree.map(lambda x: put(to_host(x), layout.replicated), tree)


def to_host(x: Any) -> np.ndarray:
    """A whole array on the host. A replicated array is read from this process's first shard,
    with no collective (under several processes only rank 0 saves, so none may be needed)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            raise ValueError("to_host: a sharded array spanning several processes is not whole on any of them")
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def pad_rows(batch: Batch, multiple: int) -> Batch:
    """``batch`` with filler rows up to a multiple of ``multiple`` rows: a single attended pad
    token and no labels, as ``core.batching.collate`` fills a short batch, so they add no loss
    (in a packed batch they are all padding: segment 0)."""
    extra = -batch.input_ids.shape[0] % multiple
    if not extra:
        return batch
    T = batch.input_ids.shape[1]
    ids = np.zeros((extra, T), batch.input_ids.dtype)
    mask = np.zeros((extra, T), batch.attention_mask.dtype)
    mask[:, 0] = 1
    labels = np.full((extra, T), IGNORE_INDEX, batch.labels.dtype)
    packed = {}
    if batch.segment_ids is not None and batch.position_ids is not None:
        positions = np.broadcast_to(np.arange(T, dtype=batch.position_ids.dtype), (extra, T))
        packed = {
            "segment_ids": np.concatenate([batch.segment_ids, np.zeros((extra, T), batch.segment_ids.dtype)]),
            "position_ids": np.concatenate([batch.position_ids, positions]),
        }
    return replace(
        batch,
        input_ids=np.concatenate([batch.input_ids, ids]),
        attention_mask=np.concatenate([batch.attention_mask, mask]),
        labels=np.concatenate([batch.labels, labels]),
        **packed,
    )


def put_rows(batch: Batch, layout: Layout) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(input_ids, attention_mask, labels) of a global micro-batch, rows split over the devices."""
    batch = pad_rows(batch, layout.size)
    sharding = layout.rows
    return (put(batch.input_ids, sharding), put(batch.attention_mask, sharding), put(batch.labels, sharding))


def put_packing(batch: Batch, layout: Layout) -> tuple[jax.Array, jax.Array] | None:
    """A packed batch's (segment_ids, position_ids), placed like ``put_rows``; None if unpacked."""
    if batch.segment_ids is None or batch.position_ids is None:
        return None
    batch = pad_rows(batch, layout.size)
    assert batch.segment_ids is not None and batch.position_ids is not None
    return put(batch.segment_ids, layout.rows), put(batch.position_ids, layout.rows)

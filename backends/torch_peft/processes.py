"""Several torchrun processes training one run: data parallel (DDP) or sharded base weights (FSDP2).

Launched with ``torchrun --nproc_per_node N -m loraswitch.core.cli train CONFIG``; torchrun sets
RANK, WORLD_SIZE and LOCAL_RANK. Config ``mesh`` chooses the layout (core.training.parallel.mesh_sizes):
null or {data: N} is DistributedDataParallel, a full model per process; {fsdp: N} (or
{data: a, fsdp: b}, hybrid) shards the frozen base weights of every decoder layer with FSDP2's
``fully_shard``, so a model larger than one device trains.

Either way the LoRA weights and their AdamW state are whole on every process, which keeps a
checkpoint independent of the number of processes. Gradients are *summed* over processes: the
core weights each micro-batch by 1 / targets in the global window, so the sum is the
single-process gradient. DDP averages, so it gets a summing communication hook; under FSDP2 the
LoRA weights are left out of the sharding and their gradients are all-reduced once per step.
"""

from __future__ import annotations

import atexit
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from loraswitch.core.errors import UserError
from loraswitch.core.training.parallel import check_divisible, mesh_sizes


def launched_with_several_processes() -> bool:
    """torchrun (or any launcher setting WORLD_SIZE) started more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(
            f"{name}={value!r}: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; launch several "
            "processes with torchrun --nproc_per_node N -m loraswitch.core.cli train CONFIG"
        ) from None


def process_device(requested: str | None) -> str:
    """One GPU per process (cuda:LOCAL_RANK) when CUDA is visible, else the CPU."""
    if requested == "cpu" or not torch.cuda.is_available():
        return "cpu"
    local_rank = _env_int("LOCAL_RANK")
    if local_rank >= torch.cuda.device_count():
        raise UserError(
            f"LOCAL_RANK={local_rank}: only {torch.cuda.device_count()} CUDA device(s) are visible; "
            "start at most that many processes per host (torchrun --nproc_per_node)"
        )
    return f"cuda:{local_rank}"


@dataclass
class ProcessGroup:
    """The core's Communicator over torch.distributed, plus what the backend needs."""

    rank: int
    world_size: int
    data: int  # replicas of the base weights
    fsdp: int  # shards of the base weights (1: DDP)
    device: torch.device  # this process's device; collectives run there (nccl needs CUDA tensors)

    @property
    def data_parallel_size(self) -> int:
        return self.world_size  # every process gets its own rows, sharded or not

    @property
    def sharded(self) -> bool:
        return self.fsdp > 1

    @property
    def layout(self) -> str:
        if not self.sharded:
            return f"ddp x{self.world_size}"
        return f"fsdp x{self.fsdp}" if self.data == 1 else f"hsdp {self.data} x {self.fsdp}"

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def any_true(self, flag: bool) -> bool:
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def all_reduce_sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over processes in place, in one collective."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))

    def device_mesh(self):
        from torch.distributed.device_mesh import init_device_mesh

        if self.data == 1:
            return init_device_mesh(self.device.type, (self.fsdp,), mesh_dim_names=("fsdp",))
        return init_device_mesh(self.device.type, (self.data, self.fsdp), mesh_dim_names=("data", "fsdp"))


def start(device: str, mesh: dict[str, int] | None, batch_size: int) -> ProcessGroup:
    """Check the layout against WORLD_SIZE, then join the process group (nccl on CUDA, gloo on
    the CPU). A process group the caller already started is reused."""
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    data, fsdp = mesh_sizes(mesh, world, unit="processes")
    check_divisible(batch_size, world)  # fail before the model loads
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if not dist.is_initialized():
        kwargs = {"device_id": torch_device} if torch_device.type == "cuda" else {}
        dist.init_process_group("nccl" if torch_device.type == "cuda" else "gloo", **kwargs)
        atexit.register(_destroy)
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise UserError(
            f"WORLD_SIZE={world}, RANK={rank} disagree with the running process group "
            f"({dist.get_world_size()} processes, rank {dist.get_rank()})"
        )
    return ProcessGroup(rank=rank, world_size=world, data=data, fsdp=fsdp, device=torch_device)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- data parallel


def _sum_allreduce_hook(process_group, bucket):
    """DDP's default hook divides by the world size; the core's weights need the plain sum."""
    work = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def wrap_ddp(module: torch.nn.Module, group: ProcessGroup) -> torch.nn.Module:
    """DistributedDataParallel over ``module`` (only parameters with requires_grad, the LoRA
    weights, are reduced), summing gradients. Buffers (rotary tables) are constant, so they are
    not re-broadcast before every forward."""
    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_buffer_sync = (
        {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    )
    ddp = DistributedDataParallel(module, device_ids=None, **no_buffer_sync)
    ddp.register_comm_hook(None, _sum_allreduce_hook)
    return ddp


class TargetLossModule(torch.nn.Module):
    """What DDP wraps: a forward that owns the decoder and the head (so LoRA on lm_head is
    reduced too) and returns the summed target cross-entropy of a batch."""

    def __init__(self, decoder: torch.nn.Module, head: torch.nn.Module, loss_fn):
        super().__init__()
        self.decoder, self.head = decoder, head
        self._loss_fn = loss_fn  # a plain function, not a submodule

    def forward(self, batch):
        return self._loss_fn(batch)


# ---------------------------------------------------------------- the loss of a window


class WindowLosses:
    """The engine converts each micro-step's contribution with float() after the window; here
    the contributions are summed over processes in one collective when the window ends (on
    every process, whether or not the caller reads them), and each handle reads its share."""

    def __init__(self) -> None:
        self.local: list[torch.Tensor] = []
        self.total: list[float] | None = None

    def add(self, loss: torch.Tensor) -> _Contribution:
        self.local.append(loss.detach().float().reshape(()))
        return _Contribution(self, len(self.local) - 1)

    def reduce(self, group: ProcessGroup) -> None:
        stacked = torch.stack(self.local).to(group.device)
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        self.total = stacked.cpu().tolist()


class _Contribution:
    """One micro-step's loss contribution summed over processes (a LossValue)."""

    def __init__(self, window: WindowLosses, index: int):
        self.window, self.index = window, index

    def __float__(self) -> float:
        if self.window.total is None:
            raise RuntimeError("a distributed micro-step's loss is known only once its window has ended")
        return self.window.total[self.index]

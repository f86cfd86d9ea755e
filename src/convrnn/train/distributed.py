"""Data-parallel training on PyTorch's own engine: ``torchrun ... -m convrnn train <recipe>``.

torchrun starts one process per device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` joins the process group (NCCL on CUDA,
gloo on CPU). Every rank builds the same data and the same seeded batch order; :class:`ShardedBatches`
gives rank ``r`` a contiguous slice of every *global* batch (``train.batch_size`` stays the global
batch), and :class:`DistributedTrainer` weights each rank's loss by its share so DDP's gradient average
equals the gradient of the whole batch: the loss trajectory matches one process with the same batch.

Only rank 0 writes (run directory, checkpoints, logs, progress); rank 0 validates on the full
validation set while the others wait at a broadcast that tells every rank whether to stop.
Positions count global batches, so a run resumes with any number of processes.

Shape:
    a global batch of ``B`` rows becomes ``B_r`` rows on rank ``r`` (``sum(B_r) == B``; a rank whose
    slice would be empty gets one row with loss weight 0, so every rank still runs forward/backward).
"""
# B batch
from __future__ import annotations

import datetime
import gc
import logging
import os
from dataclasses import dataclass, replace
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from convrnn.data.batching import BatchSource
from convrnn.train.trainer import RunModule, Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_context() -> DistContext:
    """Rank, world size and local rank from torchrun's environment (a single process without it)."""
    return DistContext(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group torchrun describes (no-op for one process); returns this rank's context.

    ``device`` is ``train.device``: ``auto`` or ``cuda`` uses NCCL and ``cuda:LOCAL_RANK``; ``cpu`` uses gloo.
    """
    ctx = env_context()
    if not ctx.enabled or dist.is_initialized():
        return ctx
    backend = "nccl" if use_cuda(device) else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    log.info("rank %d of %d (local rank %d) joined the %s process group", ctx.rank, ctx.world_size,
             ctx.local_rank, backend)
    return ctx


def use_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def rank_device(device: str, ctx: DistContext) -> str:
    """The device of this rank: ``cuda:LOCAL_RANK`` when CUDA is used, else ``device`` unchanged."""
    return f"cuda:{ctx.local_rank}" if ctx.enabled and use_cuda(device) else device


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum of ``values`` over all ranks (the values themselves for one process)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_from_main(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's ``values`` on every rank."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def shutdown() -> None:
    """Leave the process group together and while Python is fully alive (no-op for one process).

    Without it a rank could abort at exit ("terminate called without an active exception", seen in
    4 of about 130 two-process test runs): gloo work objects still referenced from garbage cycles
    were destroyed during interpreter finalization. So: collect those cycles, wait until every rank
    has arrived (rank 0 may still be writing files), then destroy the group. Callers drop their
    DDP-wrapped trainer first: its reducer holds the group too.
    """
    if dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of rank ``rank`` in ``n`` rows; sizes differ by at most one."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ShardedBatches(BatchSource):
    """This rank's contiguous slice of every batch of ``source`` (whose batches are global batches).

    Tensors whose first axis is the batch are sliced; ``loss_weight`` is ``world_size * B_r / B`` so
    the average of the ranks' weighted mean losses is the mean loss of the global batch. A rank with
    no row of its own repeats the batch's first row with weight 0. Charlm's streams are rows too:
    slicing the global batch gives each rank its own contiguous stripes.
    """

    def __init__(self, source: BatchSource, rank: int, world_size: int):
        self.source, self.rank, self.world_size = source, rank, world_size

    def num_batches(self, epoch: int) -> int:
        return self.source.num_batches(epoch)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict]:
        for batch in self.source.batches(epoch, start):
            yield self.shard(batch)

    def shard(self, batch: dict) -> dict:
        n = int(batch["x"].shape[0])
        lo, hi = shard_bounds(n, self.rank, self.world_size)
        weight = self.world_size * (hi - lo) / n
        if hi == lo:
            lo, hi = 0, 1  # nothing of its own: one row that does not count
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
                out[key] = value[lo:hi]  # (B, ...) -> (B_r, ...)
            elif isinstance(value, list) and len(value) == n:
                out[key] = value[lo:hi]
            else:
                out[key] = value
        out["loss_weight"] = weight
        return out


class DistributedTrainer(Trainer):
    """The Trainer on one rank of a DDP job: same loop, sharded batches, one writer, shared decisions.

    ``model`` stays the plain SpecModel (checkpoints, evaluation and ``run`` use it); the training step
    calls DDP(RunModule(model)), whose ``forward`` is ``model.run``, so DDP's gradient hooks fire.
    Non-main ranks get ``run_dir=None`` (they write nothing) and no callbacks.
    """

    def __init__(self, model, task, train: BatchSource, val, config, ctx: DistContext, **kwargs):
        self.ctx = ctx
        config = replace(config, device=rank_device(config.device, ctx))
        if not ctx.is_main:
            kwargs["run_dir"] = None
            kwargs["callbacks"] = ()
        if use_cuda(config.device):
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics over the global batch
        super().__init__(model, task, ShardedBatches(train, ctx.rank, ctx.world_size), val, config, **kwargs)

    def wrap_forward(self, module: RunModule) -> torch.nn.Module:
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(module, device_ids=ids)
        return torch.compile(ddp) if self.cfg.compile else ddp

    def loss_weight(self, batch: dict) -> float:
        """This rank's share of the global batch (``ShardedBatches``), so that averaged gradients are
        those of the global batch's mean loss."""
        return batch["loss_weight"]

    def reduce_loss(self, loss: torch.Tensor, batch: dict) -> float:
        """The global batch's mean loss: the average over ranks of the weighted shard losses."""
        (total,) = all_reduce_sum([float(loss) * self.loss_weight(batch)], self.device)
        return total / self.ctx.world_size

    def _limits_reached(self) -> bool:
        """Rank 0's clock and decision on every rank: same learning rate schedule, same last step."""
        stop, self.pos.train_time = broadcast_from_main([float(super()._limits_reached()), self.pos.train_time],
                                                        self.device)
        return bool(stop)

    def _validate(self) -> bool:
        """Rank 0 validates on the whole validation set; the others wait for its stop decision."""
        stop = super()._validate() if self.ctx.is_main else False
        self.val_step = self.pos.step
        (stop,) = broadcast_from_main([float(stop)], self.device)
        return bool(stop)

    def checkpoint(self) -> dict:
        # carried recurrent state is per rank (its own rows): not saved, resume restarts it from zeros
        return {**super().checkpoint(), "carried_state": None, "world_size": self.ctx.world_size}


def distributed_trainer_class(ctx: DistContext) -> Optional[type]:
    """DistributedTrainer when the job has more than one process, else None (the plain Trainer)."""
    return DistributedTrainer if ctx.enabled else None

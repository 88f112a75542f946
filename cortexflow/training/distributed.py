"""Data-parallel training across processes (torchrun, DistributedDataParallel).

``train_decoder`` launched as ``torchrun --nproc-per-node N -m cortexflow.cli
train-decoder ...`` runs N copies of the stage; :func:`init_from_env` joins them
into one process group (NCCL on GPUs, gloo on CPUs) and gives each its device,
and :class:`~cortexflow.training.trainer.Trainer` then wraps the model in
DistributedDataParallel. Launched as one process, nothing here does anything.

How the work is divided, so that N processes follow one process's run:

- the batch function still returns the *global* batch of ``batch_size`` rows
  (``batch_indices`` is stateless, so every rank computes the same indices);
  rank ``r`` keeps the ``r``-th contiguous shard (:func:`shard`) -- what a
  DistributedSampler does, without a sampler's per-epoch state to resume;
- DDP averages the shards' gradients, which is the global batch's gradient
  when the shards are equal in size, so the optimisation is the same;
- randomness inside the loss (flow times and noise, dropout) is drawn from the
  global generator reseeded every step from ``(seed, rank, step)``
  (:func:`step_seed`): ranks draw different numbers, and a resumed run draws
  the numbers the uninterrupted one drew, with no per-rank state to save;
- rank 0 alone writes checkpoints, the model and log lines.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from cortexflow.errors import CortexflowInputError
from cortexflow.models.types import BrainData

log = logging.getLogger("cortexflow.training.distributed")

__all__ = ["DistributedContext", "current", "init_from_env", "shard", "split_rows", "step_seed"]


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def current() -> DistributedContext:
    """This process's place in the process group (rank 0 of 1 outside one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistributedContext()
    return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def init_from_env(device: str) -> tuple[DistributedContext, str]:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``); returns the context and the
    device this rank trains on (``cuda:<local rank>`` for a CUDA ``device``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        if torch.cuda.device_count() <= local_rank:
            raise CortexflowInputError(
                f"torchrun started {world} processes but this node has {torch.cuda.device_count()} GPU(s)",
                fix="ask the scheduler for as many GPUs as processes (resources gpu: N), or use device: cpu",
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group(backend="nccl" if wants_cuda else "gloo")
    ctx = current()
    log.info("rank %d of %d on %s", ctx.rank, ctx.world_size, device)
    if not ctx.is_main:  # one copy of every log line
        logging.getLogger("cortexflow").setLevel(logging.WARNING)
    return ctx, device


def step_seed(seed: int, rank: int, step: int) -> int:
    """The global generator's seed for ``step`` on ``rank`` in a multi-process run."""
    return (int(seed) * 1_000_003 + int(rank) * 7_919 + int(step) * 104_729) % (2**63 - 1)


def _rows(batch: Any) -> int | None:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else None
    if isinstance(batch, BrainData):
        return batch.batch_size
    if isinstance(batch, dict):
        items = batch.values()
    elif isinstance(batch, (tuple, list)):
        items = batch
    else:
        return None
    for item in items:
        n = _rows(item)
        if n is not None:
            return n
    return None


def _slice(batch: Any, start: int, stop: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[start:stop] if batch.ndim else batch
    if isinstance(batch, BrainData):
        cut = (lambda x: None if x is None else x[start:stop])
        voxels = ({k: v[start:stop] for k, v in batch.voxels.items()} if isinstance(batch.voxels, dict)
                  else batch.voxels[start:stop])
        subject_id = batch.subject_id[start:stop] if isinstance(batch.subject_id, list) else batch.subject_id
        return BrainData(voxels, subject_id, cut(batch.subject_idx), cut(batch.prior), dict(batch.metadata))
    if isinstance(batch, dict):
        return {k: _slice(v, start, stop) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_slice(v, start, stop) for v in batch)
    if isinstance(batch, list):
        return [_slice(v, start, stop) for v in batch]
    return batch


def split_rows(batch: Any, parts: int) -> list[Any]:
    """``batch`` (tensors, BrainData, tuples, lists, dicts of them; rows along dim 0)
    cut into ``parts`` equal contiguous pieces; an uneven split is an input error,
    since equal pieces are what makes the mean of their losses the batch's loss."""
    if parts == 1:
        return [batch]
    n = _rows(batch)
    if n is None or n % parts:
        raise CortexflowInputError(
            f"a batch of {n} rows cannot be split into {parts} equal parts (processes x gradient accumulation steps)",
            fix=f"make batch_size a multiple of {parts}",
        )
    size = n // parts
    return [_slice(batch, i * size, (i + 1) * size) for i in range(parts)]


def shard(batch: Any, ctx: DistributedContext) -> Any:
    """This rank's contiguous share of the global ``batch``."""
    return split_rows(batch, ctx.world_size)[ctx.rank] if ctx.enabled else batch

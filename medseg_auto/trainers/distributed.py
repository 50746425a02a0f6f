"""Collectives for one fold trained by several processes (``torchrun``, DDP).

Every time-budget decision (epoch length, time up, validation mode and reserve, learning-rate fraction) is
rank 0's, sent to the other ranks: each rank deciding from its own clock would give the ranks different
epochs, and nnU-Net's per-epoch ``all_gather`` would then wait for ever. A stop asked of any rank stops all
of them at the same step. Without an initialised process group every helper returns its argument, so the
single-process trainer runs the same code.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    """Whether a process group is initialised (as nnU-Net's ``is_ddp``)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group): rank 0 decides and writes."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Processes training the fold (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's rank on its machine (``torchrun``'s ``LOCAL_RANK``): its GPU's index. nnU-Net uses the
    global rank, which names a GPU that does not exist on a second machine."""
    return int(os.environ.get("LOCAL_RANK", rank()))


def rank_device(asked: torch.device) -> torch.device:
    """The device this rank trains on: CUDA's GPU ``LOCAL_RANK``, else the device asked for (a CPU)."""
    return torch.device("cuda", local_rank()) if asked.type == "cuda" else asked


def _collective_device() -> torch.device:
    """Where a collective's tensor must be: NCCL only reduces GPU tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank0_and_any(values: Sequence[float], flags: Sequence[bool] = ()) -> tuple[list[float], list[bool]]:
    """Rank 0's ``values`` and, for each of ``flags``, whether any rank raised it, on every rank, in one
    ``all_reduce(MAX)``: the other ranks send -inf for the values. Every rank must call it at the same point
    with as many values and flags."""
    values, flags = [float(v) for v in values], [bool(f) for f in flags]
    if not is_distributed():
        return values, flags
    mine = values if rank() == 0 else [-math.inf] * len(values)
    tensor = torch.tensor(mine + [float(f) for f in flags], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    out = tensor.tolist()
    return out[:len(values)], [v > 0.5 for v in out[len(values):]]


def agree(value: float) -> float:
    """Rank 0's ``value`` on every rank."""
    return rank0_and_any([value])[0][0]


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is raised on any rank (a stop asked of one rank stops them all)."""
    return rank0_and_any([], [flag])[1][0]


def wrap(network: nn.Module, device: torch.device) -> nn.Module:
    """``network`` in DistributedDataParallel: on CUDA with its GPU (and batch norm synchronised, as nnU-Net
    does), on a CPU without ``device_ids`` (DDP refuses them for CPU modules)."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
        return DistributedDataParallel(network, device_ids=[device.index])
    return DistributedDataParallel(network)


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (itself otherwise): timing it on one rank runs no
    collective, where the wrapper's backward would wait for the other ranks."""
    from torch.nn.parallel import DistributedDataParallel

    return network.module if isinstance(network, DistributedDataParallel) else network

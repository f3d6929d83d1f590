"""Distributed setup of the training loop: torchrun's environment, the process group, buffer sync.

Run under ``torchrun --nproc_per_node=N -m npdg train ...``: the loop reads ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``, initializes the process group (NCCL on CUDA, gloo on CPU), wraps the model in DDP,
shards the data per rank, and lets only rank 0 write files and log.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from npdg.errors import ConfigError
from npdg.models import select_device


@dataclass(frozen=True)
class DistInfo:
    """Process placement: rank, number of processes, local GPU index."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> DistInfo:
    """Read torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (defaults: a single process)."""
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as exc:
        raise ConfigError(f"invalid torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from None


def setup_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Initialize the process group when launched by torchrun and pick this process's device."""
    info = dist_from_env()
    device = select_device(device_name)
    if info.enabled:
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
            device = torch.device("cuda", info.local_rank)
        if device.type == "mps":
            raise ConfigError("multi-process training is not supported on MPS")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP synchronizes parameters through gradients, but each rank updates its BN running statistics on
    its own shard; evaluation and the saved weights must use one consistent set.
    """
    if info.enabled and dist.is_initialized():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)



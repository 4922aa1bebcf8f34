"""Several processes (torchrun): one per GPU, or several on one CPU. Each process trains on its
own batches; DDP averages their gradients, and the processes agree on when to stop."""

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from scratchgpt.cli import UserError


@dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:  # rank 0 evaluates, logs, prints and saves
        return self.rank == 0


def setup_distributed(device: torch.device, backend: str) -> tuple[Distributed, torch.device]:
    """Join the process group when launched by torchrun (it sets RANK); else a single process."""
    if "RANK" not in os.environ:
        return Distributed(), device
    needed = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"]
    missing = [name for name in needed if name not in os.environ]
    if missing:
        raise UserError(
            f"RANK is set but {', '.join(missing)} not: start distributed runs with torchrun "
            "(see docs/distributed.md), or unset RANK"
        )
    try:
        ddp = Distributed(*(int(os.environ[name]) for name in needed[:3]))
    except ValueError:
        raise UserError("RANK, LOCAL_RANK and WORLD_SIZE must be whole numbers") from None
    if device.type == "mps":
        raise UserError("distributed training runs on CUDA or CPU, not MPS")
    if device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    return ddp, device


def agree(
    stop: bool, diverged: bool, elapsed: float, ddp: Distributed, device: torch.device
) -> tuple[bool, bool, float]:
    """All ranks stop at the same step, for the same reason, and share one clock (it sets the
    learning rate): each flag is true if it is on any rank, the clock is the slowest rank's."""
    if ddp.world_size == 1:
        return stop, diverged, elapsed
    flags = torch.tensor([stop, diverged, elapsed], dtype=torch.float64, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1]), flags[2].item()


@contextmanager
def rank_zero_first(ddp: Distributed) -> Iterator[None]:
    """Rank 0 goes through the block first, doing what is done once for all (the download, the
    token cache); the other ranks enter it once rank 0 is through."""
    if ddp.world_size > 1 and not ddp.is_main:
        dist.barrier()
    yield
    if ddp.world_size > 1 and ddp.is_main:
        dist.barrier()


def distributed_model(model: nn.Module, ddp: Distributed, device: torch.device) -> nn.Module:
    """model, wrapped to average its gradients across the processes when there are several."""
    if ddp.world_size == 1:
        return model
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def leave_distributed(ddp: Distributed) -> None:
    """Leave the process group together. The caller drops its DDP-wrapped model first: DDP holds
    the group inside reference cycles, which gloo cannot free while Python shuts down, so they
    are collected here."""
    if ddp.world_size > 1:
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()

"""The process's place in a ``torchrun`` job (or a single process): rank, world size, device."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import BenchError

__all__ = ["DistContext", "init_distributed", "shutdown_distributed"]


@dataclass(frozen=True)
class DistContext:
    """``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` of this process; rank 0 alone writes files."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether a process group is in use (more than one process)."""
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over ranks (``t`` itself when alone)."""
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def device(self, requested: str) -> torch.device:
        """``cpu``, or this rank's GPU for ``cuda``."""
        if requested.startswith("cuda"):
            if not torch.cuda.is_available():
                raise BenchError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
            if requested == "cuda":
                return torch.device("cuda", self.local_rank if self.world > 1 else torch.cuda.current_device())
            return torch.device(requested)
        if requested != "cpu":
            raise BenchError(f"unknown device {requested!r}; use cpu or cuda")
        return torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise BenchError(f"environment variable {name}={raw!r} is not an integer") from None


def init_distributed(device: str = "cpu") -> DistContext:
    """Read the torchrun environment and, when ``WORLD_SIZE > 1``, join the process group
    (NCCL for CUDA, gloo for CPU) and select this rank's GPU."""
    ctx = DistContext(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if ctx.world > 1 and not dist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return ctx


def shutdown_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""Which setting the optimizer runs in: one process, DDP or FSDP2, detected on the first step."""

from __future__ import annotations

import sys

import torch.distributed as dist

from ..execution import LocalExecutor

__all__ = ["setting", "executor_for"]


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _has_dtensor(optimizer) -> bool:
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and any(isinstance(p, dtensor.DTensor) for g in optimizer.param_groups for p in g["params"])


def setting(optimizer) -> str:
    """``"local"`` (no process group, or one rank), ``"fsdp"`` (DTensor parameters) or ``"ddp"``."""
    if _world() == 1:
        return "local"
    return "fsdp" if _has_dtensor(optimizer) else "ddp"


def executor_for(optimizer):
    """The executor for ``optimizer`` in the current setting (:func:`setting`): a
    :class:`~steepest.execution.LocalExecutor` alone, a
    :class:`~steepest.distributed.DistributedExecutor` over the default group otherwise."""
    if setting(optimizer) == "local":
        return LocalExecutor()
    from .executor import DistributedExecutor

    return DistributedExecutor()

"""Collectives under the name the installed torch prefers (``torch>=2.6``)."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_single"]

# torch 2.13 deprecates all_gather_into_tensor (a FutureWarning on every call) for all_gather_single,
# which older releases lack
_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def all_gather_single(output: Tensor, tensor: Tensor, group=None, async_op: bool = False):
    """Every rank's ``tensor`` concatenated into ``output`` (``world × tensor.numel()`` entries)."""
    return _gather(output, tensor, group=group, async_op=async_op)

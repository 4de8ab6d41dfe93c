"""Distributed training: the direction work split across ranks under DDP and FSDP2.

The optimizers detect the setting on their first step (:func:`setting`): with a process group of
several ranks they use a :class:`DistributedExecutor`, which splits each same-shape batch of
matrices across the ranks and shares the results (:mod:`.ddp` for replicated parameters,
:mod:`.fsdp` and :mod:`.krylov` for ``fully_shard``'s DTensors). :mod:`.checkpoint` saves and
loads optimizer state with ``torch.distributed.checkpoint``, across world sizes.
"""

from .agreement import OptionsMismatchError
from .checkpoint import load, save
from .detect import executor_for, setting
from .executor import DistributedExecutor

__all__ = ["DistributedExecutor", "OptionsMismatchError", "executor_for", "setting", "save", "load"]

"""Distributed training: the direction work split across ranks under DDP and FSDP2.

The optimizers detect the setting on their first step (:func:`setting`): with a process group of
several ranks they use a :class:`DistributedExecutor`, which splits each same-shape batch of
matrices across the ranks and shares the results (:mod:`.ddp` for replicated parameters,
:mod:`.fsdp` and :mod:`.rowshards` for ``fully_shard``'s DTensors). :func:`save` and :func:`load`
(:mod:`.checkpoint`) write and read optimizer state with ``torch.distributed.checkpoint``,
across world sizes. Names are imported on first use, so that a single-process run does not pay
for importing DCP.
"""

from __future__ import annotations

import importlib

__all__ = ["DistributedExecutor", "OptionsMismatchError", "executor_for", "setting", "save", "load"]

_WHERE = {
    "DistributedExecutor": "executor",
    "OptionsMismatchError": "agreement",
    "executor_for": "detect",
    "setting": "detect",
    "save": "checkpoint",
    "load": "checkpoint",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

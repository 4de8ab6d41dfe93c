"""Model and optimizer checkpoints with ``torch.distributed.checkpoint`` (DCP), across world sizes.

The optimizer state is laid out so that DCP can reshard it:

* per-parameter state shaped like the parameter (the momentum) has the parameter's layout: a
  plain tensor under DDP or in one process, a row-sharded DTensor under FSDP2, which DCP splits
  or joins to any other world size;
* the direction state (Neon's basis and rank, Shampoo's statistics and roots, Newton-Muon's input
  moments) is identical on every rank (:mod:`.ddp`), so DCP writes it once and every rank of the
  next run reads it whole.

:func:`save` and :func:`load` wrap ``get_state_dict``/``set_state_dict`` (which name state by
parameter path, whatever the wrapping) and ``dcp.save``/``dcp.load``. Loading needs tensors to
read into; a fresh optimizer gets them from torch's zero-gradient initialisation step, and
:func:`load` then fits them to the checkpoint's metadata: Neon F*'s basis width follows the
saved rank, and state that the checkpoint does not hold is left out rather than kept at its
initial value. Both functions are collectives: call them on every rank.
"""

from __future__ import annotations

import os

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.optim import Optimizer

__all__ = ["save", "load"]


def _optimizers(optimizer: Optimizer) -> list[Optimizer]:
    """A :class:`~steepest.optim.CombinedOptimizer`'s children (the state dict API takes a list)."""
    return list(getattr(optimizer, "optimizers", [optimizer]))


def save(checkpoint_id: str | os.PathLike, model: nn.Module, optimizer: Optimizer) -> None:
    """Write ``model`` and ``optimizer`` state under the directory ``checkpoint_id``."""
    model_state, optim_state = get_state_dict(model, _optimizers(optimizer))
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=checkpoint_id)


def load(checkpoint_id: str | os.PathLike, model: nn.Module, optimizer: Optimizer) -> None:
    """Read a :func:`save` checkpoint into ``model`` and ``optimizer``, written under any world
    size and any of single process, DDP or FSDP2."""
    optimizers = _optimizers(optimizer)
    model_state, optim_state = get_state_dict(model, optimizers)
    metadata = dcp.FileSystemReader(checkpoint_id).read_metadata().state_dict_metadata
    state = {"model": model_state, "optim": _fit(optim_state, metadata, "optim")}
    dcp.load(state, checkpoint_id=checkpoint_id)
    set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _fit(optim_state: dict, metadata: dict, prefix: str) -> dict:
    """The template ``optim_state`` with the checkpoint's shapes and dtypes for replicated
    tensors, and without the entries the checkpoint lacks."""
    fitted = {}
    for fqn, entries in optim_state["state"].items():
        kept = {}
        for key, value in entries.items():
            saved = metadata.get(f"{prefix}.state.{fqn}.{key}")
            if saved is None:
                continue
            is_plain = isinstance(value, torch.Tensor) and not hasattr(value, "placements")
            if is_plain and isinstance(saved, TensorStorageMetadata):
                if tuple(saved.size) != tuple(value.shape) or saved.properties.dtype != value.dtype:
                    value = torch.empty(tuple(saved.size), dtype=saved.properties.dtype, device=value.device)
            kept[key] = value
        if kept:
            fitted[fqn] = kept
    return {**optim_state, "state": fitted}

"""Replicated matrices (DDP): each rank computes its share, one all-gather gives every rank all.

Under DDP every rank holds every matrix and the same (all-reduced) gradient. For a batch of ``k``
same-shape matrices (:mod:`.partition`), rank ``r`` computes the directions of its slice only,
and one asynchronous all-gather of ``slots`` directions per rank gives every rank
the whole batch (when no rank before the last is short, the gathered buffer *is* the batch, with
no copy); a second one, of bytes (:mod:`.packing`), carries the direction state that
``direction`` wrote (Neon's basis and rank, Shampoo's roots) when there is any. So every rank
applies the same updates and keeps the same optimizer state (``optimizer.state_dict()`` on rank 0
alone is a full checkpoint). The all-gathers run while the next batch is computed.

Work that needs the gradients and that every rank can repeat cheaply runs on every rank before
the split (``prepare_directions``: Shampoo's ``L``, ``R`` and grafting statistics), so that
those never travel.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..execution import Bucket
from .compat import all_gather_single
from .packing import Layout
from .partition import Assignment

__all__ = ["ReplicatedBatch", "share_of", "finish_state"]


def share_of(bucket: Bucket, indices: range, momenta: list[Tensor] | None = None, with_grads: bool = True) -> Bucket:
    """The sub-bucket of ``bucket`` at ``indices`` (its ``whole`` is ``bucket``)."""
    pick = lambda xs: [xs[i] for i in indices]  # noqa: E731
    return Bucket(
        bucket.shape,
        pick(bucket.params),
        pick(bucket.grads) if with_grads else [],
        pick(bucket.momenta) if momenta is None else momenta,
        pick(bucket.states),
        pick(bucket.names),
        batch=bucket,
        skip=bucket.skip,
    )


class ReplicatedBatch:
    """One batch of whole matrices, split by :class:`~.partition.Assignment` and all-gathered."""

    def __init__(self, executor, optimizer, group: dict, bucket: Bucket, plan: Assignment, process_group) -> None:
        self.ex, self.optimizer, self.group, self.bucket, self.plan, self.pg = executor, optimizer, group, bucket, plan, process_group

    def start(self) -> None:
        self.optimizer.prepare_directions(self.group, self.bucket)

    def compute(self) -> None:
        bucket, plan, rank = self.bucket, self.plan, self.ex.rank
        momentum = bucket.momenta[0]
        state = self.optimizer.direction_state(self.group, bucket)  # before direction() writes it
        owned = plan.owned(rank)
        values = {}
        send = None
        if len(owned):
            share = share_of(bucket, owned)
            D = self.ex.compute_direction(self.optimizer, self.group, share)
            if D.dtype != momentum.dtype or tuple(D.shape) != (len(owned), *bucket.shape):
                raise RuntimeError(f"{type(self.optimizer).__name__}.direction returned {tuple(D.shape)} {D.dtype}, expected {(len(owned), *bucket.shape)} {momentum.dtype}")
            if len(owned) == plan.slots and D.is_contiguous():
                send = D  # a full share is sent as it is
            values = {key: share.stack_state(key) for key in state}
        if send is None:
            send = momentum.new_zeros(plan.slots, *bucket.shape)
            if len(owned):
                send[: len(owned)] = D
        self.gathered = momentum.new_empty(plan.world * plan.slots, *bucket.shape)
        self.handle = all_gather_single(self.gathered, send, group=self.pg, async_op=True)
        start_state(self, state, values, momentum.device)

    def finish(self) -> Tensor:
        self.handle.wait()
        finish_state(self)
        self.optimizer.directions_done(self.group, self.bucket)
        return self.plan.in_matrix_order(self.gathered)


def start_state(batch, state: dict, values: dict[str, Tensor], device: torch.device) -> None:
    """Start the all-gather of the direction state that this rank computed (packed in one byte
    buffer); :func:`finish_state` stores it."""
    batch.state_handle = None
    if not state:
        return
    batch.layout = Layout.of(state, batch.plan.slots)
    block = batch.layout.pack(values, device)
    batch.state_gathered = torch.empty(batch.plan.world * block.numel(), dtype=torch.uint8, device=block.device)
    batch.state_handle = all_gather_single(batch.state_gathered, block, group=batch.pg, async_op=True)


def finish_state(batch) -> None:
    """Wait for the direction state of ``batch`` and store every matrix's entries."""
    if batch.state_handle is None:
        return
    batch.state_handle.wait()
    parts = batch.layout.unpack(batch.state_gathered, batch.plan.world)
    index = batch.plan.slot_index()
    for key, values in parts.items():
        # a copy: views of one byte buffer as several dtypes could not be torch.save'd together
        batch.bucket.store_state(key, values.flatten(0, 1)[index])

"""Replicated matrices (DDP): each rank computes its share, one all-gather gives every rank all.

Under DDP every rank holds every matrix and the same (all-reduced) gradient. For a batch of ``k``
same-shape matrices (:mod:`.partition`), rank ``r`` computes the directions of its slice only,
writes them and the direction state (Neon's basis and rank, Shampoo's roots) into its block of
``slots`` slots (:mod:`.packing`), and one asynchronous ``all_gather_into_tensor`` gives every rank
the whole batch: the directions to apply and the state to keep, so that every rank's optimizer
state stays identical (``optimizer.state_dict()`` on rank 0 alone is a full checkpoint). The
all-gather runs while the next batch is computed.

Work that needs the gradients and that every rank can repeat cheaply runs on every rank before
the split (``prepare_directions``: Shampoo's ``L``, ``R`` and grafting statistics), so that
those never travel.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..optim.base import Bucket
from .packing import Layout
from .partition import Assignment

__all__ = ["ReplicatedBatch", "share_of"]


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
    )


class ReplicatedBatch:
    """One batch of whole matrices, split by :class:`~.partition.Assignment` and all-gathered."""

    def __init__(self, executor, optimizer, group: dict, bucket: Bucket, plan: Assignment, process_group) -> None:
        self.ex, self.optimizer, self.group, self.bucket, self.plan, self.pg = executor, optimizer, group, bucket, plan, process_group

    def start(self) -> None:
        self.optimizer.prepare_directions(self.group, self.bucket)

    def compute(self) -> None:
        bucket, rank = self.bucket, self.ex.rank
        state = self.optimizer.direction_state(self.group, bucket)  # before direction() writes it
        self.layout = Layout.of({"direction": (bucket.shape, bucket.momenta[0].dtype), **state}, self.plan.slots)
        values = {}
        owned = self.plan.owned(rank)
        if len(owned):
            share = share_of(bucket, owned)
            values["direction"] = self.ex.compute_direction(self.optimizer, self.group, share)
            values.update({key: share.stack_state(key) for key in state})
        block = self.layout.pack(values, bucket.momenta[0].device)
        self.gathered = torch.empty(self.plan.world * block.numel(), dtype=torch.uint8, device=block.device)
        self.handle = dist.all_gather_into_tensor(self.gathered, block, group=self.pg, async_op=True)

    def finish(self) -> Tensor:
        self.handle.wait()
        parts = self.layout.unpack(self.gathered, self.plan.world)
        ranks, slots = (torch.tensor(x, device=self.gathered.device) for x in self.plan.slot_of())
        for key, values in parts.items():
            if key != "direction":
                self.bucket.store_state(key, values[ranks, slots])
        self.optimizer.directions_done(self.group, self.bucket)
        return parts["direction"][ranks, slots]

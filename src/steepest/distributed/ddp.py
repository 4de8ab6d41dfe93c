"""Replicated matrices (DDP): each rank computes its share, one all-gather gives every rank all.

Under DDP every rank holds every matrix and the same (all-reduced) gradient. For a batch of ``k``
same-shape matrices (:mod:`.partition`), rank ``r`` computes the directions of its slice only,
and one asynchronous all-gather of ``slots`` directions per rank gives every rank
the whole batch (when no rank before the last is short, the gathered buffer *is* the batch, with
no copy); a second one, of bytes (:mod:`.packing`), carries the direction state that
``direction`` wrote (Neon's basis and rank, Shampoo's roots) when there is any. So every rank
applies the same updates and keeps the same optimizer state (``optimizer.state_dict()`` on rank 0
alone is a full checkpoint). The all-gathers run while the next batch is computed. Directions
that the optimizer announces as factors (``direction_factors``: a rank-``r`` ``left·rightᵀ``)
travel as their factors, ``(m + n)·r`` numbers per matrix instead of ``m·n``, and every rank adds
them as a low-rank update.

Work that needs the gradients and that every rank can repeat cheaply runs on every rank before
the split (``prepare_directions``: Shampoo's ``L``, ``R`` and grafting statistics), so that
those never travel.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..execution import Bucket, LowRank
from .compat import all_gather_single
from .packing import Layout
from .partition import Assignment

__all__ = ["ReplicatedBatch", "share_of", "finish_state", "pack_factors", "unpack_factors"]


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
        self.factors = self.optimizer.direction_factors(self.group, bucket)
        owned = plan.owned(rank)
        values = {}
        D = None
        if len(owned):
            share = share_of(bucket, owned)
            D = self.ex.compute_direction(self.optimizer, self.group, share, factored=self.factors is not None)
            values = {key: share.stack_state(key) for key in state}
        if self.factors is not None:
            send = pack_factors(self.optimizer, D, len(owned), bucket.shape, self.factors, plan.slots, momentum.device)
        else:
            send = self._dense_block(D, len(owned), momentum)
        self.gathered = send.new_empty(plan.world * plan.slots, *send.shape[1:])
        self.handle = all_gather_single(self.gathered, send, group=self.pg, async_op=True)
        start_state(self, state, values, momentum.device)

    def _dense_block(self, D: Tensor | None, owned: int, momentum: Tensor) -> Tensor:
        """This rank's ``(slots, m, n)`` block of dense directions (zeros in unused slots)."""
        shape = (owned, *self.bucket.shape)
        if D is not None and (D.dtype != momentum.dtype or tuple(D.shape) != shape):
            raise RuntimeError(f"{type(self.optimizer).__name__}.direction returned {tuple(D.shape)} {D.dtype}, expected {shape} {momentum.dtype}")
        if D is not None and owned == self.plan.slots and D.is_contiguous():
            return D  # a full share is sent as it is
        send = momentum.new_zeros(self.plan.slots, *self.bucket.shape)
        if D is not None:
            send[:owned] = D
        return send

    def finish(self) -> Tensor | LowRank:
        self.handle.wait()
        finish_state(self)
        self.optimizer.directions_done(self.group, self.bucket)
        D = self.plan.in_matrix_order(self.gathered)
        return D if self.factors is None else unpack_factors(D, self.bucket.shape, self.factors[0])


def pack_factors(optimizer, D: LowRank | None, owned: int, shape: tuple[int, int], factors: tuple[int, torch.dtype], slots: int, device) -> Tensor:
    """``(slots, (m + n)·r)``: each owned matrix's ``left`` and ``right`` factors side by side
    (zeros in unused slots), checked against what ``optimizer.direction_factors`` announced."""
    (m, n), (r, dtype) = shape, factors
    send = torch.zeros(slots, (m + n) * r, dtype=dtype, device=device)
    if D is None:
        return send
    expected = ((owned, m, r), (owned, n, r))
    if not isinstance(D, LowRank) or (tuple(D.left.shape), tuple(D.right.shape)) != expected or D.left.dtype != dtype or D.right.dtype != dtype:
        got = type(D).__name__ if not isinstance(D, LowRank) else f"factors {tuple(D.left.shape)}, {tuple(D.right.shape)} {D.left.dtype}"
        raise RuntimeError(f"{type(optimizer).__name__}.direction returned {got}, expected factors {expected[0]}, {expected[1]} {dtype} (direction_factors)")
    send[:owned, : m * r] = D.left.reshape(owned, m * r)
    send[:owned, m * r :] = D.right.reshape(owned, n * r)
    return send


def unpack_factors(packed: Tensor, shape: tuple[int, int], r: int) -> LowRank:
    """The :class:`~steepest.execution.LowRank` of :func:`pack_factors`' ``(k, (m + n)·r)`` rows."""
    m, n = shape
    k = packed.shape[0]
    return LowRank(packed[:, : m * r].reshape(k, m, r), packed[:, m * r :].reshape(k, n, r))


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

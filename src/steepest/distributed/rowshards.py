"""Batches of row-sharded (FSDP2 ``Shard(0)``) matrices whose direction is computed in place.

A direction that touches a matrix only through products with thin blocks (a block power
iteration, Dion's power step) can run on row shards: each rank works on its own rows ``M_r`` and
the ranks exchange small blocks, orthonormal rows by a TSQR (:func:`tsqr`) and sums such as
``Σ_r M_rᵀ P_r`` by all-reduces. An optimizer offers this through its ``row_shard_direction``
hook; this module gives that function the collectives over the shards' process group
(:func:`row_collectives`, a :class:`~steepest.directions.collectives.RowCollectives`) and runs it
in the executor's batch protocol (``start``, ``compute``, ``finish``). Per iteration a rank moves
``(W·l + n)·l`` numbers per matrix instead of the ``2mn(W − 1)/W`` of the all-to-all round trip.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..directions.collectives import RowCollectives
from ..execution import Bucket
from .compat import all_gather_single
from .fsdp import row_ranges

__all__ = ["RowShardBatch", "row_collectives", "tsqr"]


def tsqr(X: Tensor, rows: list[tuple[int, int]], rank: int, process_group) -> Tensor:
    """Orthonormal rows ``P_r`` of a row-sharded ``(k, m, l)`` batch (``X`` is this rank's rows):
    local QRs, one all-gather of the ``R`` factors, the QR of their stack (Householder all along,
    so rank-deficient blocks stay orthonormal)."""
    k, mine, l = X.shape
    world = len(rows)
    heights = [min(b - a, l) for a, b in rows]
    Q, R = torch.linalg.qr(X, mode="reduced")  # (k, mine, h), (k, h, l)
    padded = X.new_zeros(k, l, l)
    padded[:, : heights[rank]] = R
    gathered = X.new_empty(world * k * l * l)
    all_gather_single(gathered, padded.reshape(-1), process_group)
    Rs = gathered.view(world, k, l, l)
    stack = torch.cat([Rs[q, :, :h] for q, h in enumerate(heights)], dim=1)  # (k, Σh, l)
    Q2 = torch.linalg.qr(stack, mode="reduced").Q
    offset = sum(heights[:rank])
    return Q @ Q2[:, offset : offset + heights[rank]]


def row_collectives(rows: list[tuple[int, int]], rank: int, process_group) -> RowCollectives:
    """The collectives over the row shards ``rows`` (every rank's ``[start, stop)``) of ``process_group``."""

    def reduce(t: Tensor, op) -> Tensor:
        t = t.contiguous()
        dist.all_reduce(t, op=op, group=process_group)
        return t

    return RowCollectives(
        sum=lambda t: reduce(t, dist.ReduceOp.SUM),
        max=lambda t: reduce(t, dist.ReduceOp.MAX),
        any=lambda flags: reduce(flags.to(torch.int32), dist.ReduceOp.MAX).bool(),
        orth=lambda X: tsqr(X, rows, rank, process_group),
        rows=rows[-1][1],
        offset=rows[rank][0],
    )


class RowShardBatch:
    """One batch of row-sharded matrices stepped in place by ``direction(M_r, ops)``, the function
    the optimizer's ``row_shard_direction`` returned (see the module doc)."""

    def __init__(self, executor, optimizer, group: dict, bucket: Bucket, process_group, direction) -> None:
        self.ex, self.optimizer, self.group, self.bucket, self.pg = executor, optimizer, group, bucket, process_group
        self.direction = direction

    def start(self) -> None:
        pass

    def compute(self) -> None:
        m, n = self.bucket.shape
        rows = row_ranges(m, self.ex.world)
        first, last = rows[self.ex.rank]
        self.ex.count(self.bucket.shape, rows=(last - first) * len(self.bucket.momenta))
        local = torch.stack([t.reshape(last - first, n) for t in self.bucket.momenta])
        self.D = self.direction(local, row_collectives(rows, self.ex.rank, self.pg))

    def finish(self) -> Tensor:
        self.optimizer.directions_done(self.group, self.bucket)
        return self.D

"""Batches of row-sharded (FSDP2 ``Shard(0)``) matrices whose direction is computed in place.

Neon (:mod:`.krylov`) and Dion (:mod:`.dion_rows`) touch a matrix only through products with thin
blocks, so on row shards each rank works on its own rows and the ranks exchange small blocks:
orthonormal rows by a TSQR (:func:`tsqr`), sums of ``M_rᵀ P_r`` by all-reduces. This module holds
what both share: the TSQR and the batch protocol of the executor (``start``, ``compute``,
``finish``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..optim.base import Bucket
from .fsdp import row_ranges

__all__ = ["RowShardBatch", "tsqr"]


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
    dist.all_gather_into_tensor(gathered, padded.reshape(-1), group=process_group)
    Rs = gathered.view(world, k, l, l)
    stack = torch.cat([Rs[q, :, :h] for q, h in enumerate(heights)], dim=1)  # (k, Σh, l)
    Q2 = torch.linalg.qr(stack, mode="reduced").Q
    offset = sum(heights[:rank])
    return Q @ Q2[:, offset : offset + heights[rank]]


class RowShardBatch:
    """One batch of row-sharded matrices stepped in place; subclasses implement :meth:`compute`,
    which sets ``self.D`` (this rank's rows of the directions)."""

    def __init__(self, executor, optimizer, group: dict, bucket: Bucket, process_group) -> None:
        self.ex, self.optimizer, self.group, self.bucket, self.pg = executor, optimizer, group, bucket, process_group

    def start(self) -> None:
        pass

    def local_rows(self) -> tuple[list[tuple[int, int]], Tensor]:
        """Every rank's row range of the batch's matrices, and this rank's rows of the momenta as
        one ``(k, rows, n)`` stack; counted in the executor's ``rows``."""
        m, n = self.bucket.shape
        rows = row_ranges(m, self.ex.world)
        first, last = rows[self.ex.rank]
        self.ex.count(self.bucket.shape, rows=(last - first) * len(self.bucket.momenta))
        return rows, torch.stack([t.reshape(last - first, n) for t in self.bucket.momenta])

    def compute(self) -> None:
        raise NotImplementedError

    def finish(self) -> Tensor:
        self.optimizer.directions_done(self.group, self.bucket)
        return self.D

"""Neon on row shards: the block power iteration without moving the matrices.

Neon's direction needs only the top-``l`` singular triplets of ``M`` (``l`` small), and a block
power iteration touches ``M`` through products with thin blocks. With ``M`` sharded by rows
(``M_r``, ``rows_r × n``) every product is local or a sum over ranks of local products:

    P = orth(M Q)        P_r = rows of a TSQR of the local M_r Q        (all-gather of l×l R's)
    Y = Mᵀ P             Y = Σ_r M_rᵀ P_r                                 (all-reduce, n×l)
    Q = orth(Y)          the same QR on every rank

then the Rayleigh–Ritz step ``B = Pᵀ M = Σ_r P_rᵀ M_r`` (all-reduce, l×n), ``B = Ũ Σ Vᵀ`` on every
rank, ``U_r = P_r Ũ``, and each rank's rows of the direction ``U_r·f(Σ)·Vᵀ`` (σ₁u₁v₁ᵀ or
``U[Σ − τ]₊Vᵀ``) are local. Per iteration a rank moves ``(W·l + n)·l`` numbers per matrix instead
of the ``2mn(W − 1)/W`` of the all-to-all round trip, and the new basis ``V`` and F*'s rank come
out identical on every rank, so the state needs no gather. The cost: four latency-bound
collectives per warm step, and the small QR and SVD (``O(n l²)``) repeated on every rank.

The arithmetic is that of :func:`steepest.directions.top_singular` with ``oversample=0``; only
the summation order of the products and the orthonormal bases chosen by the QRs differ, which
changes results by rounding as long as the iterated blocks have full column rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..directions.fstar import soft_threshold_update
from ..directions.lowrank import Triplets
from ..directions.nuclear import rank_one
from ..optim.base import Bucket
from .fsdp import row_ranges

__all__ = ["KrylovBatch", "tsqr"]


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


def _sum(t: Tensor, process_group) -> Tensor:
    dist.all_reduce(t, group=process_group)
    return t


class KrylovBatch:
    """One batch of row-sharded Neon matrices, iterated in place (see the module doc)."""

    def __init__(self, executor, optimizer, group: dict, bucket: Bucket, process_group) -> None:
        self.ex, self.optimizer, self.group, self.bucket, self.pg = executor, optimizer, group, bucket, process_group

    def start(self) -> None:
        pass

    def compute(self) -> None:
        opt, group, bucket, rank = self.optimizer, self.group, self.bucket, self.ex.rank
        m, n = bucket.shape
        rows = row_ranges(m, self.ex.world)
        mine = rows[rank][1] - rows[rank][0]
        M = torch.stack([t.reshape(mine, n) for t in bucket.momenta])
        dtype = torch.float64 if M.dtype == torch.float64 else torch.float32
        A = M.to(dtype)
        width = opt.block_width(group, bucket)
        Q, iters = opt.start_block(group, bucket, width, A)  # bases of other widths cut or padded, as in one process
        for _ in range(iters):
            P = tsqr(A @ Q, rows, rank, self.pg)
            Q = torch.linalg.qr(_sum(A.mT @ P, self.pg), mode="reduced").Q
        P = tsqr(A @ Q, rows, rank, self.pg)
        Ub, S, Vh = torch.linalg.svd(_sum(P.mT @ A, self.pg), full_matrices=False)
        triplets = Triplets(P @ Ub, S, Vh.mT)
        self.ex.count(bucket.shape, rows=mine * len(bucket.momenta))
        bucket.store_state("basis", triplets.V[..., :width])
        if group["mode"] == "nuclear":
            self.D = rank_one(*triplets, group["sigma"]).to(M.dtype)
        else:
            D, rank_ = soft_threshold_update(triplets, group["variant"], group["sigma"])
            bucket.store_state("rank", rank_)
            self.D = D.to(M.dtype)

    def finish(self) -> Tensor:
        self.optimizer.directions_done(self.group, self.bucket)
        return self.D

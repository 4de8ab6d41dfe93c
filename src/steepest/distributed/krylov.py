"""Neon on row shards: the block power iteration without moving the matrices.

Neon's direction needs only the top-``l`` singular triplets of ``M`` (``l`` small), and a block
power iteration touches ``M`` through products with thin blocks. With ``M`` sharded by rows
(``M_r``, ``rows_r × n``) every product is local or a sum over ranks of local products:

    P = orth(M Q)        P_r = rows of a TSQR of the local M_r Q        (all-gather of l×l R's)
    Y = Mᵀ P             Y = Σ_r M_rᵀ P_r                                 (all-reduce, n×l)
    Q = orth(Y)          the same QR on every rank

then the Rayleigh–Ritz step ``B = Pᵀ M = Σ_r P_rᵀ M_r`` (all-reduce, l×n), ``B = Ũ Σ Vᵀ`` on every
rank, ``U_r = P_r Ũ``, and each rank's rows of the direction ``U_r·f(Σ)·Vᵀ`` (σ₁u₁v₁ᵀ or
``U[Σ − τ]₊Vᵀ``) are local. F*'s block grows within the step as in one process (a matrix whose rank
needs more columns is iterated again at twice the width, all ranks deciding alike). Per iteration a rank moves ``(W·l + n)·l`` numbers per matrix instead
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

from ..directions.fstar import padded_block, soft_threshold_update
from ..directions.lowrank import Triplets, transpose_times
from ..directions.nuclear import rank_one
from .rowshards import RowShardBatch, tsqr

__all__ = ["KrylovBatch", "tsqr"]


def _sum(t: Tensor, process_group) -> Tensor:
    dist.all_reduce(t, group=process_group)
    return t


class KrylovBatch(RowShardBatch):
    """One batch of row-sharded Neon matrices, iterated in place (see the module doc)."""

    def compute(self) -> None:
        opt, group, bucket = self.optimizer, self.group, self.bucket
        rows, M = self.local_rows()
        dtype = torch.float64 if M.dtype == torch.float64 else torch.float32
        A = M.to(dtype)
        width = opt.block_width(group, bucket)
        Q, iters = opt.start_block(group, bucket, width, A)  # bases of other widths cut or padded, as in one process
        triplets = self._triplets(A, Q, iters, rows)
        if group["mode"] == "nuclear":
            bucket.store_state("basis", triplets.V[..., :width])
            self.D = rank_one(*triplets, group["sigma"]).to(M.dtype)
            return
        D, rank_, V = self._grow(A, triplets, width, rows)
        bucket.store_state("basis", V)
        bucket.store_state("rank", rank_)
        self.D = D.to(M.dtype)

    def _triplets(self, A: Tensor, Q: Tensor, iters: int, rows: list[tuple[int, int]]) -> Triplets:
        """This rank's rows of the top ``Q.shape[-1]`` triplets of the row-sharded batch ``A``."""
        rank = self.ex.rank
        for _ in range(iters):
            P = tsqr(A @ Q, rows, rank, self.pg)
            Q = torch.linalg.qr(_sum(transpose_times(A, P), self.pg), mode="reduced").Q
        P = tsqr(A @ Q, rows, rank, self.pg)
        Ub, S, Vh = torch.linalg.svd(_sum(P.mT @ A, self.pg), full_matrices=False)
        return Triplets(P @ Ub, S, Vh.mT)

    def _grow(self, A: Tensor, triplets: Triplets, width: int, rows: list[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor]:
        """F*'s ``(D, rank, V[:, :width])``, recomputing at ``2l``, ``4l``, … up to ``min(m, n)`` the
        matrices whose rank needs more than the block holds (``r + 1 + oversample > l``), as
        :func:`~steepest.directions.fstar_adaptive` does in one process. Every rank decides alike:
        the growth flags are combined by an all-reduce (max). No dense fallback here: a block as wide
        as ``min(m, n)`` is exact."""
        group = self.group
        D, rank_ = soft_threshold_update(triplets, group["variant"], group["sigma"])
        V = triplets.V[..., :width].clone()
        full = min(A.shape[-1], rows[-1][1])
        w, todo, Vw, rw = width, None, triplets.V, rank_
        while w < full:
            grow = (rw + 1 + group["oversample"] > w).to(torch.int32)
            dist.all_reduce(grow, op=dist.ReduceOp.MAX, group=self.pg)
            pick = [i for i, g in enumerate(grow.tolist()) if g]
            if not pick:
                break
            sel = torch.tensor(pick, device=A.device)
            todo = sel if todo is None else todo[sel]
            w = min(2 * w, full)
            grown = self._triplets(A[todo], padded_block(Vw[sel], w), max(group["iters"], group["cold_iters"]), rows)
            Dw, rw = soft_threshold_update(grown, group["variant"], group["sigma"])
            Vw = grown.V
            D[todo], rank_[todo], V[todo] = Dw.to(D.dtype), rw, Vw[..., :width]
        return D, rank_, V

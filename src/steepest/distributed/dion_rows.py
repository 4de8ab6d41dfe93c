"""Dion on row shards: its power iteration with small collectives, never whole matrices.

Dion's step touches ``B = M + G`` only through products with thin blocks, which is the point of
its design for sharded training (Ahn et al. 2025). With ``B`` sharded by rows (``B_r``,
``rows_r × n``, FSDP2's ``Shard(0)``) and ``Q`` replicated:

    s = max_r max|B_r|          all-reduce (max) of one number per matrix: the float32 range scale
    P_r = rows of orth(B Q)     a TSQR of the local B_r Q                  (all-gather of r×r R's)
    R = Bᵀ P = Σ_r B_rᵀ P_r     all-reduce, n × r
    Q ← colnorm(R)              the same on every rank
    M_r ← B_r − (1−μ)·P_r Rᵀ,   D_r = P_r Qᵀ                               (local rows)

Per matrix a rank moves ``(W·r + n)·r + 1`` numbers, against ``2mn(W − 1)/W`` for the all-to-all
path that gathers whole matrices on owners. The arithmetic is that of
:func:`steepest.directions.dion.power_step`; only the summation order of ``Bᵀ P`` and the
orthonormal basis the QRs pick differ, which changes results by rounding.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..directions.dion import factors_from, nonzero_scale
from ..directions.lowrank import transpose_times
from .rowshards import RowShardBatch, tsqr

__all__ = ["DionRowBatch"]


class DionRowBatch(RowShardBatch):
    """One batch of row-sharded Dion matrices, stepped in place (see the module doc)."""

    def compute(self) -> None:
        opt, bucket, rank = self.optimizer, self.bucket, self.ex.rank
        m, n = bucket.shape
        rows, B = self.local_rows()
        first, last = rows[rank]
        dtype = torch.float64 if B.dtype == torch.float64 else torch.float32
        previous = opt.previous_basis(self.group, bucket, dtype, B.device)
        X = B.to(dtype)
        amax = X.abs().amax(dim=(-2, -1)) if X.numel() else X.new_zeros(X.shape[0])
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=self.pg)
        scale = nonzero_scale(amax)
        X = X / scale[..., None, None]
        P = tsqr(X @ previous, rows, rank, self.pg)
        R = transpose_times(X, P).contiguous()
        dist.all_reduce(R, group=self.pg)
        factors = factors_from(P, R, scale, max(m, n))
        # directions_done takes this rank's rows of P from an (m, r) P: place them there
        full_P = P.new_zeros(P.shape[0], m, P.shape[-1])
        full_P[:, first:last] = P
        opt.store_factors(bucket, previous, factors._replace(P=full_P))
        self.D = (P @ factors.Q.mT).to(B.dtype)

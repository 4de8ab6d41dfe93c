"""Dion's low-rank orthonormal update: one warm power iteration with error feedback.

Dion (Ahn et al. 2025, "Dion: Distributed Orthonormalized Updates", arXiv 2504.05295, Algorithm 1)
keeps, per weight matrix, a momentum ``M`` (``m × n``) and a right basis ``Q`` (``n × r``), and
each step, with the new gradient ``G`` and momentum decay ``μ``:

.. math::
    B = M + G,\\quad P = \\mathrm{orth}(B Q),\\quad R = B^\\top P,\\\\
    M \\leftarrow B - (1-\\mu) P R^\\top,\\quad Q \\leftarrow \\mathrm{colnorm}(R),\\quad
    W \\leftarrow W - \\eta\\, s(m, n)\\, P Q^\\top.

``P`` has orthonormal columns (a QR factorisation), ``Q``'s columns have unit length, so the
update ``P Qᵀ`` is a rank-``r`` stand-in for Muon's ``msgn(B)``; the error feedback leaves in
the momentum what the rank-``r`` step did not capture (all of it but a ``(1−μ)`` share of
``P Rᵀ``), so that later steps reach it. One power iteration per step suffices because ``Q`` is
warm-started from the previous step's ``R``.

The functions here are pure and batched over leading dimensions; :class:`steepest.optim.Dion`
keeps the state and applies the step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .collectives import LOCAL, RowCollectives
from .lowrank import random_block, transpose_times

__all__ = ["DionFactors", "dion_rank", "initial_basis", "power_step", "factors_from", "nonzero_scale", "next_basis", "error_feedback", "dion_update"]


class DionFactors(NamedTuple):
    """One Dion power iteration: ``B Q → P``, ``Bᵀ P = R = Q·diag(norms)``."""

    P: Tensor  # (..., m, r): orthonormal columns, orth(B Q)
    Q: Tensor  # (..., n, r): R's columns divided by their norms (zero where R's column is zero)
    norms: Tensor  # (..., r): R's column norms


def dion_rank(shape: tuple[int, int], fraction: float) -> int:
    """``r = ⌈fraction·min(m, n)⌉``, at least 1 and at most ``min(m, n)``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"rank_fraction must be in (0, 1], got {fraction!r}")
    a = min(shape)
    return max(1, min(a, math.ceil(fraction * a - 1e-9)))


def initial_basis(n: int, r: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """The starting ``Q``: a deterministic Gaussian ``(n, r)`` block (the same for every matrix,
    independent of the global RNG, so every rank and every resumed run draws the same one) with
    unit columns, computed in float64 and cast to ``dtype``."""
    block = random_block(torch.Size(), n, r, dtype=torch.float64, device=torch.device("cpu"))
    return (block / block.norm(dim=0, keepdim=True)).to(device=device, dtype=dtype)


def power_step(B: Tensor, Q: Tensor, ops: RowCollectives = LOCAL) -> DionFactors:
    """``P = orth(B Q)`` (Householder QR), ``R = Bᵀ P``, ``Q' = R / ‖R‖_col``, in ``Q``'s dtype.

    ``B``: ``(..., m, n)`` (cast to ``Q``'s dtype); ``Q``: ``(..., n, r)`` with ``r ≤ min(m, n)``.
    A column of ``R`` whose norm is at most ``max(m, n)·eps·max(‖R‖_col)`` counts as zero (its norm
    is set to 0 and its column of ``Q'`` is 0): when ``B`` has rank below ``r`` (a small batch's
    gradient), the extra columns of ``P`` span rounding noise, and normalising them would turn that
    noise into unit directions of the update. A zero ``B`` gives a zero update. (The reference adds an
    absolute 1e-8 to the norms instead, which depends on the scale of ``B``.)

    With ``ops`` of row-split matrices (:mod:`~steepest.directions.collectives`; FSDP2 row shards),
    ``B`` is this process's rows and so is ``P``: the scale is a maximum over the processes, ``P`` a
    TSQR, ``R = Σ_r B_rᵀ P_r`` a sum, so each moves ``(W·r + n)·r + 1`` numbers per matrix instead of
    the whole matrix (Ahn et al. 2025, §3)."""
    X = B.to(Q.dtype)
    # divided by its largest entry first, so that neither the products nor the norms overflow or
    # underflow (float32 from entries of ~1e±19); P and Q' do not depend on the scale
    amax = X.abs().amax(dim=(-2, -1)) if X.numel() else X.new_zeros(X.shape[:-2])  # a shard may hold no rows
    scale = nonzero_scale(ops.max(amax))
    X = X / scale[..., None, None]
    P = ops.orth(X @ Q)
    return factors_from(P, ops.sum(transpose_times(X, P)), scale, max(ops.total_rows(X), X.shape[-1]))


def nonzero_scale(amax: Tensor) -> Tensor:
    """Each matrix's largest ``|entry|`` (``amax``), 1 where the matrix is zero."""
    return torch.where(amax > 0, amax, torch.ones_like(amax))


def factors_from(P: Tensor, R: Tensor, scale: Tensor, longest: int) -> DionFactors:
    """:class:`DionFactors` from ``P`` and ``R = XᵀP`` of ``X = B/scale`` (``longest = max(m, n)``):
    ``R``'s columns at rounding level (``≤ longest·eps·max‖R‖_col``) count as zero."""
    norms = torch.linalg.vector_norm(R, dim=-2)
    floor = norms.amax(-1, keepdim=True) * (longest * torch.finfo(R.dtype).eps)
    norms = torch.where(norms > floor, norms, torch.zeros_like(norms))
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    return DionFactors(P, R * ((norms > 0) / safe).unsqueeze(-2), norms * scale[..., None])


def next_basis(previous: Tensor, factors: DionFactors) -> Tensor:
    """The ``Q`` that the next step starts from: ``factors.Q``, except that a column of zero norm
    keeps its previous direction (so the warm start survives a zero gradient; the reference adds
    1e-8 to the norm instead, which zeroes that column for good)."""
    return torch.where(factors.norms.unsqueeze(-2) > 0, factors.Q, previous)


def error_feedback(B: Tensor, P: Tensor, Q: Tensor, norms: Tensor, mu: float) -> Tensor:
    """``B − (1−μ)·P Rᵀ`` with ``R = Q·diag(norms)``, computed in ``P``'s dtype, returned in ``B``'s."""
    R = Q * norms.unsqueeze(-2)
    k = math.prod(B.shape[:-2])  # not -1: a row shard may hold no rows
    out = torch.baddbmm(B.to(P.dtype).reshape(k, *B.shape[-2:]), P.reshape(k, *P.shape[-2:]), R.reshape(k, *R.shape[-2:]).mT, alpha=-(1 - mu))
    return out.reshape(B.shape).to(B.dtype)


def dion_update(B: Tensor, Q: Tensor, ops: RowCollectives = LOCAL) -> tuple[Tensor, DionFactors]:
    """``(P Q'ᵀ, factors)``: the unscaled rank-``r`` update of one step, in ``Q``'s dtype (this
    process's rows with row-split ``ops``, see :func:`power_step`)."""
    factors = power_step(B, Q, ops)
    return factors.P @ factors.Q.mT, factors

"""Neon's nuclear-norm direction: a rank-1 update.

Steepest descent under the nuclear norm, ``argmin_Δ ⟨G, Δ⟩ + λ/2·‖Δ‖_*²``, is
``Δ = −(1/λ)·σ₁u₁v₁ᵀ``: the dual of the nuclear norm is the spectral norm ``‖G‖₂ = σ₁``, and its
duality map is ``u₁v₁ᵀ``. The Neon seed's eq. 2 writes ``−1/(2λ)·u₁σ₁v₁ᵀ``, a convention factor
of 2 that the learning rate absorbs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_choice, check_matrix, compute_dtype
from ..execution import LowRank
from .collectives import LOCAL, RowCollectives
from .lowrank import block_triplets, top_singular

__all__ = ["nuclear_direction", "nuclear_block", "rank_one", "SIGMA_MODES", "NUCLEAR_METHODS"]

SIGMA_MODES = ("keep", "drop")
NUCLEAR_METHODS = ("svd", "power")


def nuclear_direction(
    G: Tensor,
    *,
    sigma: str = "keep",
    method: str = "svd",
    init: Tensor | None = None,
    iters: int | None = None,
    tol: float | None = 1e-5,
    check_finite: bool = True,
) -> Tensor:
    """``D = σ₁ u₁ v₁ᵀ`` (``sigma="keep"``, the seed's formula and the exact minimiser at λ = 1) or
    ``u₁ v₁ᵀ`` (``sigma="drop"``, the Neon authors' code). The optimizer steps ``W ← W − lr·D``.

    Args:
        G: ``(..., m, n)``.
        sigma: ``"keep"`` or ``"drop"``.
        method: ``"svd"`` (exact, dense) or ``"power"`` (block power iteration, warm-startable
            from ``init``, the previous ``v₁``; what the Neon optimizer runs each step).
        init, iters, tol: passed to :func:`~steepest.directions.top_singular` for
            ``method="power"`` (``tol=None``: fixed ``iters``, no host sync).

    Returns:
        A rank-1 tensor of ``G``'s shape and dtype; zero for ``G = 0``.
    """
    check_matrix(G, "G", check_finite=check_finite)
    check_choice(sigma, "sigma", SIGMA_MODES)
    check_choice(method, "method", NUCLEAR_METHODS)
    if method == "svd":
        U, S, Vh = torch.linalg.svd(G.to(compute_dtype(G.dtype)), full_matrices=False)
        u, s, v = U[..., :1], S[..., :1], Vh[..., :1, :].mT
    else:
        u, s, v = top_singular(G, 1, init=init, iters=iters, tol=tol, check_finite=False)
    return rank_one(u, s, v, sigma).to(G.dtype)


def rank_one(u: Tensor, s: Tensor, v: Tensor, sigma: str, out: Tensor | None = None) -> Tensor:
    """``σ₁u₁v₁ᵀ`` or ``u₁v₁ᵀ`` from the top triplet; ``u₁v₁ᵀ`` is zeroed where ``σ₁ = 0``. Written
    into ``out`` (same shape and dtype) if given."""
    weight = s if sigma == "keep" else (s > 0).to(s.dtype)
    # An outer product as a broadcast multiply: a matmul with inner size 1 is several times
    # slower on CPU BLAS, and no faster on GPUs (both are bound by writing the m×n result).
    return torch.mul(u[..., :1] * weight[..., None, :1], v[..., :1].mT, out=out)


def nuclear_block(
    M: Tensor, init: Tensor, iters: int, sigma: str = "keep", capture: bool = False, out: Tensor | None = None,
    ops: RowCollectives = LOCAL, factored: bool = False,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """``(D, V, C)``: Neon's rank-1 update of a ``(k, m, n)`` batch from ``iters`` warm block power
    iterations on the ``(k, n, l)`` block ``init`` and a Rayleigh–Ritz step
    (:func:`~steepest.directions.lowrank.block_triplets`, in float32, float64 for float64 ``M``).
    ``D`` (:func:`rank_one`) is written into ``out`` if given; ``V`` is the iterated block's right
    singular vectors (the next step's start); with ``capture``, ``C`` holds the factors
    ``(σ₁u₁, v₁)`` (``(k, m, 1)``, ``(k, n, 1)``) of the captured part ``σ₁u₁v₁ᵀ`` (else ``None``).
    With row-split ``ops``, ``M``, ``D`` and ``σ₁u₁`` are this process's rows. With ``factored``,
    ``D`` is returned as its factors, a :class:`~steepest.execution.LowRank` ``(w·u₁, v₁)``
    (``w = σ₁``, or ``[σ₁ > 0]`` for ``sigma="drop"``), never formed. No host read."""
    U, S, V = block_triplets(M.to(compute_dtype(M.dtype)), init, iters, ops)
    factors = (U[..., :1] * S[..., None, :1], V[..., :1]) if capture else None
    if factored:
        weight = S[..., None, :1] if sigma == "keep" else (S[..., None, :1] > 0).to(S.dtype)
        return LowRank(U[..., :1] * weight, V[..., :1]), V, factors
    return rank_one(U, S, V, sigma, out=out), V, factors

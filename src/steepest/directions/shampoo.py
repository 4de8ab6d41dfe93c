"""Shampoo's two-sided preconditioned direction ``L^{-1/4} G R^{-1/4}`` (Gupta, Koren & Singer 2018).

With ``L = Σ GGᵀ`` and ``R = Σ GᵀG`` accumulated over steps, ``D = (L+εI)^{-1/4} G (R+εI)^{-1/4}``
is the exact minimiser of ``⟨G, Δ⟩ + ½‖L^{1/8} Δ R^{1/8}‖_F²`` (up to the sign ``Δ = −D``).
Without accumulation (``L = GGᵀ``, ``R = GᵀG``, ``ε = 0`` with pseudo-inverse roots) it is exactly
``U_r V_rᵀ`` (the lecture seed): Shampoo is Muon with memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_matrix, check_nonnegative, check_square, compute_dtype

__all__ = ["shampoo_direction", "inverse_root"]


def inverse_root(A: Tensor, p: float, *, eps: float = 0.0, check_finite: bool = True) -> Tensor:
    """``(A + εI)^{-1/p}`` for symmetric PSD ``A`` (batched), by ``eigh`` in float32 (float64 input
    stays float64).

    Eigenvalues are clamped at 0 first (PSD round-off). With ``eps = 0`` the root is the
    pseudo-inverse one: eigenvalues at or below ``size·eps_machine·λ_max`` map to 0, not to ∞.
    """
    check_matrix(A, "A", check_finite=check_finite)
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be square (..., d, d), got shape {tuple(A.shape)}")
    check_nonnegative(eps, "eps")
    if not p > 0:
        raise ValueError(f"p must be > 0, got {p!r}")
    dtype = compute_dtype(A.dtype)
    X = A.to(dtype)
    X = (X + X.mT) / 2
    lam, Q = torch.linalg.eigh(X)
    lam = lam.clamp(min=0) + eps
    cutoff = A.shape[-1] * torch.finfo(dtype).eps * lam[..., -1:]
    root = torch.where(lam > cutoff, lam.clamp(min=torch.finfo(dtype).tiny) ** (-1.0 / p), torch.zeros_like(lam))
    return ((Q * root.unsqueeze(-2)) @ Q.mT).to(A.dtype)


def shampoo_direction(G: Tensor, L: Tensor, R: Tensor, *, eps: float = 1e-12, check_finite: bool = True) -> Tensor:
    """``D = (L + εI)^{-1/4} · G · (R + εI)^{-1/4}``.

    Args:
        G: ``(..., m, n)``.
        L: ``(..., m, m)`` symmetric PSD (left statistics, ``Σ GGᵀ``).
        R: ``(..., n, n)`` symmetric PSD (right statistics, ``Σ GᵀG``).
        eps: ridge ``ε ≥ 0``; ``0`` means pseudo-inverse roots.

    Returns:
        A tensor of ``G``'s shape and dtype.
    """
    check_matrix(G, "G", check_finite=check_finite)
    m, n = G.shape[-2:]
    check_square(L, "L", m, G.shape[:-2], check_finite=check_finite)
    check_square(R, "R", n, G.shape[:-2], check_finite=check_finite)
    check_nonnegative(eps, "eps")
    dtype = compute_dtype(G.dtype)
    left = inverse_root(L.to(dtype), 4, eps=eps, check_finite=False)
    right = inverse_root(R.to(dtype), 4, eps=eps, check_finite=False)
    return (left @ G.to(dtype) @ right).to(G.dtype)

"""Float64 references for every direction, straight from a full ``torch.linalg.svd``/``eigh``.

Written for clarity, not speed, and independently of the fast code paths: thresholds are found by
bisection on their defining equations rather than by the closed forms the library uses.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "svd64",
    "reference_msgn",
    "reference_nuclear",
    "reference_fstar",
    "reference_shampoo",
    "reference_newton_muon",
    "relative_error",
    "bisect_root",
]


def svd64(G: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Compact SVD in float64: ``(U, S, V)`` with ``G = U diag(S) Vᵀ``."""
    U, S, Vh = torch.linalg.svd(G.to(torch.float64), full_matrices=False)
    return U, S, Vh.mT


def _rank_mask(S: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    precision = torch.float64 if dtype == torch.float64 else torch.float32  # half inputs compute in fp32
    tol = max(shape[-2:]) * torch.finfo(precision).eps * S[..., :1]
    return (S > tol).to(S.dtype)


def reference_msgn(G: Tensor) -> Tensor:
    """``U_r V_rᵀ`` over the singular values that are nonzero at the precision the library computes
    ``G`` in (``σ > max(m, n)·eps·σ₁``, eps of float32 for float32/half inputs, of float64 for
    float64: a float32 input's rounding noise is not rank), in float64."""
    U, S, V = svd64(G)
    return (U * _rank_mask(S, G.shape, G.dtype).unsqueeze(-2)) @ V.mT


def reference_nuclear(G: Tensor, sigma: str = "keep") -> Tensor:
    U, S, V = svd64(G)
    w = S[..., :1] if sigma == "keep" else (S[..., :1] > 0).to(S.dtype)
    return (U[..., :1] * w.unsqueeze(-2)) @ V[..., :1].mT


def bisect_root(f, lo: Tensor, hi: Tensor, iters: int = 200) -> Tensor:
    """Root of a function decreasing on ``[lo, hi]`` with ``f(lo) ≥ 0 ≥ f(hi)``, elementwise."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        pos = f(mid) > 0
        lo, hi = torch.where(pos, mid, lo), torch.where(pos, hi, mid)
    return (lo + hi) / 2


def reference_fstar(G: Tensor, variant: str = "seed") -> Tensor:
    """``U[Σ−τ]₊Vᵀ`` with ``Σ[σ−τ]₊ = τ`` (seed), or ``k·U[Σ−c]₊Vᵀ`` with ``c = ‖[σ−c]₊‖₂`` and
    ``k = 4c/(Σ[σ−c]₊ + c)`` (mean_of_norms); thresholds by bisection."""
    U, S, V = svd64(G)
    zero = torch.zeros_like(S[..., 0])
    top = S[..., 0]
    if variant == "seed":
        tau = bisect_root(lambda t: (S - t[..., None]).clamp(min=0).sum(-1) - t, zero, top)
        d = (S - tau[..., None]).clamp(min=0)
    else:
        c = bisect_root(lambda t: torch.linalg.vector_norm((S - t[..., None]).clamp(min=0), dim=-1) - t, zero, top)
        plus = (S - c[..., None]).clamp(min=0)
        k = torch.where(c > 0, 4 * c / (plus.sum(-1) + c).clamp(min=1e-300), zero)
        d = plus * k[..., None]
    return (U * d.unsqueeze(-2)) @ V.mT


def _root64(A: Tensor, eps: float) -> Tensor:
    lam, Q = torch.linalg.eigh(A.to(torch.float64))
    lam = lam.clamp(min=0) + eps
    keep = lam > A.shape[-1] * torch.finfo(torch.float64).eps * lam[..., -1:]
    root = torch.where(keep, lam.clamp(min=1e-300) ** -0.25, torch.zeros_like(lam))
    return (Q * root.unsqueeze(-2)) @ Q.mT


def reference_shampoo(G: Tensor, L: Tensor, R: Tensor, eps: float) -> Tensor:
    return _root64(L, eps) @ G.to(torch.float64) @ _root64(R, eps)


def reference_newton_muon(G: Tensor, K: Tensor, damping: float) -> Tensor:
    K64 = K.to(torch.float64)
    eye = torch.eye(K.shape[-1], dtype=torch.float64)
    X = torch.linalg.solve(K64 + damping * eye, G.to(torch.float64).mT).mT
    U, S, V = svd64(X)
    return (U * _rank_mask(S, G.shape, G.dtype).unsqueeze(-2)) @ V.mT


def relative_error(D: Tensor, ref: Tensor) -> float:
    """``‖D − ref‖_F / ‖ref‖_F`` (the absolute error when ``ref = 0``)."""
    diff = torch.linalg.vector_norm(D.to(torch.float64) - ref.to(torch.float64)).item()
    scale = torch.linalg.vector_norm(ref.to(torch.float64)).item()
    return diff / scale if scale > 0 else diff

"""Newton-Muon's direction ``msgn(G·(ZZᵀ)⁻¹)`` (Du & Su 2026, arXiv 2604.01472).

A quadratic surrogate of the loss in the weight perturbation, built from the gradient ``G``, an
output-space curvature and the layer inputs ``Z`` (one column per token), is minimised in closed
form under an isotropy assumption, giving ``W ← W − η·msgn(G (ZZᵀ)⁻¹)``: Muon is the special case
that neglects the right preconditioning by the input second moment ``ZZᵀ``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_matrix, check_nonnegative, check_square, compute_dtype
from .msgn import msgn

__all__ = ["newton_muon_direction", "right_precondition"]


def right_precondition(G: Tensor, K: Tensor, damping: float | Tensor) -> Tensor:
    """``G·(K + δI)⁻¹`` by a Cholesky solve in float32 (float64 input stays float64).

    ``δ`` is a float or a tensor broadcastable to ``K``'s batch dims. Where the Cholesky
    factorisation fails (``K + δI`` not positive definite), ``G`` is returned unchanged, as in the
    paper's reference code; no host sync either way.
    """
    dtype = compute_dtype(G.dtype)
    K = K.to(dtype)
    n = K.shape[-1]
    eye = torch.eye(n, dtype=dtype, device=K.device)
    damping = torch.as_tensor(damping, dtype=dtype, device=K.device)
    chol, info = torch.linalg.cholesky_ex(K + damping[..., None, None] * eye)
    solved = torch.cholesky_solve(G.to(dtype).mT, chol).mT  # (K+δI) symmetric: G K⁻¹ = (K⁻¹ Gᵀ)ᵀ
    ok = (info == 0)[..., None, None]
    return torch.where(ok, solved, G.to(dtype)).to(G.dtype)


def newton_muon_direction(
    G: Tensor,
    ZZt: Tensor,
    *,
    damping: float = 0.0,
    method: str = "polar_express",
    steps: int = 5,
    dtype: torch.dtype | None = None,
    check_finite: bool = True,
) -> Tensor:
    """``D = msgn(G · (ZZᵀ + δI)⁻¹)``.

    Args:
        G: ``(..., m, n)`` gradient (or momentum) of a weight mapping ``n`` inputs to ``m`` outputs.
        ZZt: ``(..., n, n)`` second moment of the layer's inputs.
        damping: ridge ``δ ≥ 0`` (the optimizer uses ``0.2·tr(ZZᵀ)/n``, the paper's setting).
        method, steps, dtype: as in :func:`~steepest.directions.msgn`.

    Returns:
        A tensor of ``G``'s shape and dtype.
    """
    check_matrix(G, "G", check_finite=check_finite)
    check_square(ZZt, "ZZt", G.shape[-1], G.shape[:-2], check_finite=check_finite)
    check_nonnegative(damping, "damping")
    return msgn(right_precondition(G, ZZt, damping), method=method, steps=steps, dtype=dtype, check_finite=False)

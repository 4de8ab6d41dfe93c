"""The matrix sign ``msgn(G) = U Vᵀ`` of the compact SVD ``G = U Σ Vᵀ``.

Odd matrix polynomials act on the singular values only, ``p(UΣVᵀ) = U p(Σ) Vᵀ``, so after a
Frobenius pre-normalisation (all σ ≤ 1) a few polynomial steps push every σ towards 1 with
matmuls alone. Two schedules are provided, plus the exact SVD:

* ``"newton_schulz"``: Muon's quintic ``X ← aX + (bA + cA²)X``, ``A = XXᵀ``, with
  ``(a, b, c) = (3.4445, −4.7750, 2.0315)`` every step (Jordan et al. 2024). It converges only to
  σ ∈ [~0.7, ~1.2], by design.
* ``"polar_express"``: a different ``(a, b, c)`` per step, each optimal for the interval the previous
  step leaves (Amsel et al. 2025, the tuple used by modded-nanogpt and dion), after normalising by
  ``1.02·‖X‖_F + 1e-6``. Same cost, closer to ``UVᵀ``. Steps beyond the fifth use the quintic
  ``(15, −10, 3)/8``, which has ``p(1) = 1, p′(1) = 0`` and so converges to exactly 1.
* ``"svd"``: exact, in float32 (float64 for float64 input); singular values below
  ``max(m, n)·eps·σ₁`` count as zero, so a rank-deficient ``G`` gives ``U_r V_rᵀ``.

Tall matrices are transposed first so that the Gram matrix ``XXᵀ`` is the smaller one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_choice, check_matrix, check_positive_int
from .kernels import symmetric_product, use_symmetric_kernel

__all__ = [
    "msgn",
    "MSGN_METHODS",
    "NEWTON_SCHULZ_COEFFICIENTS",
    "POLAR_EXPRESS_COEFFICIENTS",
    "default_iteration_dtype",
    "polynomial_coefficients",
    "msgn_polynomial",
]

MSGN_METHODS = ("polar_express", "newton_schulz", "svd")

NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_EPS = 1e-7  # torch.optim.Muon's clamp on the Frobenius norm

POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 1.02
POLAR_EXPRESS_EPS = 1e-6
CONVERGENT_QUINTIC = (15 / 8, -10 / 8, 3 / 8)


def default_iteration_dtype(device: torch.device) -> torch.dtype:
    """bf16 where matmuls are fast in it (CUDA); float32 elsewhere (CPUs without bf16 units run
    bf16 matmuls ~100× slower than float32)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def polynomial_coefficients(method: str, steps: int) -> list[tuple[float, float, float]]:
    """The ``(a, b, c)`` of each step of an iterative ``msgn`` method."""
    if method == "newton_schulz":
        return [NEWTON_SCHULZ_COEFFICIENTS] * steps
    extra = max(0, steps - len(POLAR_EXPRESS_COEFFICIENTS))
    return list(POLAR_EXPRESS_COEFFICIENTS[:steps]) + [CONVERGENT_QUINTIC] * extra


def msgn(
    G: Tensor,
    *,
    method: str = "polar_express",
    steps: int = 5,
    dtype: torch.dtype | None = None,
    check_finite: bool = True,
) -> Tensor:
    """≈ ``U Vᵀ`` for ``G = U Σ Vᵀ`` (compact SVD), batched over leading dims.

    Args:
        G: ``(..., m, n)`` real tensor.
        method: ``"polar_express"`` (default), ``"newton_schulz"`` or ``"svd"`` (exact).
        steps: polynomial steps for the iterative methods.
        dtype: matmul precision of the iterative methods; default bf16 on CUDA, float32 elsewhere.
        check_finite: raise on NaN/Inf in ``G`` (one host sync).

    Returns:
        A tensor of ``G``'s shape and dtype. ``msgn(0) = 0``.
    """
    check_matrix(G, "G", check_finite=check_finite)
    check_choice(method, "method", MSGN_METHODS)
    if method == "svd":
        return _msgn_svd(G)
    check_positive_int(steps, "steps")
    dtype = default_iteration_dtype(G.device) if dtype is None else dtype
    return msgn_polynomial(G, method, steps, dtype)


def _msgn_svd(G: Tensor) -> Tensor:
    X = G.to(torch.float64 if G.dtype == torch.float64 else torch.float32)
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    rtol = max(X.shape[-2:]) * torch.finfo(X.dtype).eps
    keep = (S > rtol * S[..., :1]).to(X.dtype)
    return ((U * keep.unsqueeze(-2)) @ Vh).to(G.dtype)


def msgn_polynomial(G: Tensor, method: str, steps: int, dtype: torch.dtype) -> Tensor:
    """The iterative methods of :func:`msgn` without input checks (what optimizers call)."""
    transpose = G.shape[-2] > G.shape[-1]
    X = G.to(dtype)
    if transpose:
        X = X.mT
    if method == "newton_schulz":
        # torch.optim.Muon's exact operations, so that our update reproduces it bit for bit in bf16
        norm = X.norm() if X.ndim == 2 else torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
        X = X / norm.clamp(min=NEWTON_SCHULZ_EPS)
    else:
        norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
        X = X / (norm * POLAR_EXPRESS_SAFETY + POLAR_EXPRESS_EPS)
    batch_shape = X.shape[:-2]
    if X.ndim > 3:
        X = X.reshape(-1, *X.shape[-2:])
    for a, b, c in polynomial_coefficients(method, steps):
        X = _quintic_step(X, a, b, c)
    X = X.reshape(*batch_shape, *X.shape[-2:])
    if transpose:
        X = X.mT
    return X.to(G.dtype)


def _quintic_step(X: Tensor, a: float, b: float, c: float) -> Tensor:
    """``aX + (bA + cA²)X`` with ``A = XXᵀ``: 3 matmuls, for 2-D or 3-D ``X``.

    On CUDA the two symmetric products ``A`` and ``bA + cA·Aᵀ`` compute only their upper
    triangles (:mod:`steepest.directions.kernels`, when Triton is installed)."""
    if X.ndim == 2:
        A = X @ X.mT
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        return torch.addmm(X, B, X, beta=a)
    if use_symmetric_kernel(X):
        A = symmetric_product(X, use_triton=True)
        B = symmetric_product(A, alpha=c, beta=b, C=A, use_triton=True)
    else:
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
    return torch.baddbmm(X, B, X, beta=a)

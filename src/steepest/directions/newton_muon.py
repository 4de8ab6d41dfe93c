"""Newton-Muon's direction ``msgn(G·(ZZᵀ)⁻¹)`` (Du & Su 2026, arXiv 2604.01472).

A quadratic surrogate of the loss in the weight perturbation, built from the gradient ``G``, an
output-space curvature and the layer inputs ``Z`` (one column per token), is minimised in closed
form under an isotropy assumption, giving ``W ← W − η·msgn(G (ZZᵀ)⁻¹)``: Muon is the special case
that neglects the right preconditioning by the input second moment ``ZZᵀ``.

**Singular ``ZZᵀ``** (fewer tokens than inputs, dead input channels): ``(ZZᵀ)⁻¹`` does not exist
and, without a ridge, a float32 Cholesky factorisation succeeds or fails by rounding (succeeding
with entries of 1e7 that amplify rounding noise, or failing). So the ridge is never smaller than
``MIN_RIDGE·‖ZZᵀ‖_F`` (1e-4): ``K + δI`` is then positive definite with condition number at most
``1 + 10⁴`` for every symmetric positive semi-definite ``K``, its float32 factorisation succeeds,
and the solve is accurate to ~1e-3 (``κ·eps₃₂``) whatever the rounding. Both ``G`` and ``K`` are
multiplied by powers of two (exact) before the factorisation, so the result does not depend on
their absolute scale either.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ._checks import check_matrix, check_nonnegative, check_square, compute_dtype
from .msgn import msgn, power_of_two_scale

__all__ = ["newton_muon_direction", "right_precondition", "effective_ridge", "trace_ridge", "damped_inverse", "MIN_RIDGE"]

MIN_RIDGE = 1e-4  # the ridge is at least MIN_RIDGE·‖K‖_F (module docstring)
RIDGE_FLOOR = 1e-8  # added to trace_ridge: K = 0 with damping 0 still factorises


def effective_ridge(K: Tensor, damping: float | Tensor, min_ridge: float = MIN_RIDGE) -> Tensor:
    """``max(δ, min_ridge·‖K‖_F)`` per matrix of ``K`` (shape ``K.shape[:-2]``), in ``K``'s dtype."""
    damping = torch.as_tensor(damping, dtype=K.dtype, device=K.device)
    return torch.maximum(damping, min_ridge * torch.linalg.matrix_norm(K))


def trace_ridge(K: Tensor, damping: float, *, min_ridge: float = MIN_RIDGE) -> Tensor:
    """The ridge relative to the mean eigenvalue, the paper's setting: per matrix of ``K``
    (shape ``K.shape[:-2]``), ``δ = max(damping·tr(K)/n, min_ridge·‖K‖_F) + 1e-8``, in ``K``'s dtype."""
    trace = torch.diagonal(K, dim1=-2, dim2=-1).sum(-1)
    return effective_ridge(K, damping * trace / K.shape[-1], min_ridge) + RIDGE_FLOOR


def damped_inverse(K: Tensor, damping: float, *, min_ridge: float = MIN_RIDGE) -> Tensor:
    """``(K + δI)⁻¹`` per matrix of ``K`` (``(..., n, n)``, symmetric positive semi-definite), with
    :func:`trace_ridge`'s ``δ``, by a Cholesky factorisation in ``K``'s dtype; the identity where the
    factorisation fails (``K`` indefinite). No host read and no warning: the optimizer's cached
    inverse, refreshed every few steps and then applied as one GEMM, ``G·K⁻¹``."""
    check_matrix(K, "K", check_finite=False)
    if K.shape[-2] != K.shape[-1]:
        raise ValueError(f"K must be square, (..., n, n), got {tuple(K.shape)}")
    check_nonnegative(damping, "damping")
    ridge = trace_ridge(K, damping, min_ridge=min_ridge)
    eye = torch.eye(K.shape[-1], device=K.device, dtype=K.dtype)
    chol, info = torch.linalg.cholesky_ex(K + ridge[..., None, None] * eye)
    return torch.where((info == 0)[..., None, None], torch.cholesky_inverse(chol), eye)


def _scaled_solve(G: Tensor, K: Tensor, damping: float | Tensor, min_ridge: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(2⁻ᵃG)·(2⁻ᵇ(K + δI))⁻¹`` with ``2⁻ᵃ, 2⁻ᵇ`` the powers of two that bring ``G``'s and ``K``'s
    largest entries into ``[½, 1)`` (or ``2⁻ᵃG`` where the factorisation failed); returns it, the
    two scales and the success mask. Float32 (float64 for float64 ``G``)."""
    dtype = compute_dtype(G.dtype)
    Gc, Kc = G.to(dtype), K.to(dtype)
    g_scale, k_scale = power_of_two_scale(Gc), power_of_two_scale(Kc)
    Gs, Ks = Gc * g_scale, Kc * k_scale
    damping = torch.as_tensor(damping, dtype=dtype, device=K.device)
    ridge = effective_ridge(Ks, damping * k_scale[..., 0, 0], min_ridge)
    eye = torch.eye(K.shape[-1], dtype=dtype, device=K.device)
    chol, info = torch.linalg.cholesky_ex(Ks + ridge[..., None, None] * eye)
    solved = torch.cholesky_solve(Gs.mT, chol).mT  # (K+δI) symmetric: G K⁻¹ = (K⁻¹ Gᵀ)ᵀ
    ok = (info == 0)[..., None, None]
    failed = int((~ok).sum())  # one host read
    if failed:
        warnings.warn(
            f"Newton-Muon: K + δI is not positive definite for {failed} of {ok.numel()} matrices (the Cholesky "
            f"factorisation failed despite the ridge max(damping, {min_ridge:g}·‖K‖_F)); their directions use G "
            "unpreconditioned (Muon's). K must be a symmetric positive semi-definite second moment ZZᵀ.",
            RuntimeWarning,
            stacklevel=3,
        )
    return torch.where(ok, solved, Gs), g_scale, k_scale, ok


def right_precondition(G: Tensor, K: Tensor, damping: float | Tensor, *, min_ridge: float = MIN_RIDGE) -> Tensor:
    """``G·(K + δI)⁻¹`` by a Cholesky solve in float32 (float64 input stays float64), with the ridge
    ``δ = max(damping, min_ridge·‖K‖_F)`` (:func:`effective_ridge`; ``min_ridge=0`` gives the plain
    ``damping``).

    ``damping`` is a float or a tensor broadcastable to ``K``'s batch dims. Where the factorisation
    fails (``K`` not positive semi-definite, e.g. indefinite), ``G`` is returned unchanged, as in the
    paper's reference code, with a ``RuntimeWarning``; finding out reads one value on the host.
    """
    X, g_scale, k_scale, ok = _scaled_solve(G, K, damping, min_ridge)
    return (X * torch.where(ok, k_scale / g_scale, 1 / g_scale)).to(G.dtype)


def newton_muon_direction(
    G: Tensor,
    ZZt: Tensor,
    *,
    damping: float = 0.0,
    min_ridge: float = MIN_RIDGE,
    method: str = "polar_express",
    steps: int = 5,
    dtype: torch.dtype | None = None,
    check_finite: bool = True,
) -> Tensor:
    """``D = msgn(G · (ZZᵀ + δI)⁻¹)`` with ``δ = max(damping, min_ridge·‖ZZᵀ‖_F)``.

    Args:
        G: ``(..., m, n)`` gradient (or momentum) of a weight mapping ``n`` inputs to ``m`` outputs.
        ZZt: ``(..., n, n)`` second moment of the layer's inputs (symmetric positive semi-definite).
        damping: ridge ``δ ≥ 0`` (the optimizer uses ``0.2·tr(ZZᵀ)/n``, the paper's setting).
        min_ridge: the smallest ridge relative to ``‖ZZᵀ‖_F`` (default 1e-4, see the module
            docstring); 0 disables it, and a singular ``ZZᵀ`` then gives a rounding-dependent result.
        method, steps, dtype: as in :func:`~steepest.directions.msgn`.

    Returns:
        A tensor of ``G``'s shape and dtype. Where ``ZZᵀ + δI`` cannot be factorised (``ZZᵀ`` not
        positive semi-definite), ``msgn(G)`` with a ``RuntimeWarning`` (:func:`right_precondition`).
    """
    check_matrix(G, "G", check_finite=check_finite)
    check_square(ZZt, "ZZt", G.shape[-1], G.shape[:-2], check_finite=check_finite)
    check_nonnegative(damping, "damping")
    check_nonnegative(min_ridge, "min_ridge")
    X, _, _, _ = _scaled_solve(G, ZZt, damping, min_ridge)  # msgn ignores the positive scale factors
    return msgn(X, method=method, steps=steps, dtype=dtype, check_finite=False).to(G.dtype)

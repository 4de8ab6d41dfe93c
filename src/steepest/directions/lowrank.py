"""Top-k singular triplets by warm-started block subspace iteration on matmuls.

The Neon seed computed its triplets with a sparse Lanczos SVD (cupy ``svds``): one vector at a
time, host-side loops. Here a block of ``l = k + p`` vectors (``p`` oversampling columns) is
iterated with batched matmuls, then a Rayleigh–Ritz step extracts the triplets (Halko, Martinsson
& Tropp 2011; the warm-started single step is what PowerSGD and Dion run every optimizer step):

    P = orth(G Q);  Q = orth(Gᵀ P)          (one power iteration, 4mnl FLOPs)
    P = orth(G Q);  B = Pᵀ G = Ũ Σ Vᵀ       (Rayleigh–Ritz)
    U = P Ũ

Warm-starting ``Q`` from the previous optimizer step's right singular vectors, one or two
iterations reach the accuracy of a cold start with many. ``σᵢ`` converges like
``(σ_{l+1}/σᵢ)^{2q}``, which is why oversampling matters (Halko, Martinsson & Tropp 2011, §9; Musco & Musco 2015).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import check_matrix, check_nonnegative, check_positive_int, compute_dtype
from .collectives import LOCAL, RowCollectives

__all__ = ["Triplets", "top_singular", "block_triplets", "default_oversample", "random_block", "transpose_times"]

INIT_SEED = 0x5EED


class Triplets(NamedTuple):
    """Singular triplets, largest first: ``G ≈ U diag(S) Vᵀ``."""

    U: Tensor  # (..., m, k)
    S: Tensor  # (..., k)
    V: Tensor  # (..., n, k)


def default_oversample(k: int) -> int:
    """Oversampling columns for a top-k problem: ``max(2, k // 2)`` (l ≈ 1.5k, reference §4)."""
    return max(2, k // 2)


def random_block(batch_shape: torch.Size, n: int, l: int, *, dtype: torch.dtype, device: torch.device, seed: int = INIT_SEED) -> Tensor:
    """A deterministic Gaussian ``(n, l)`` start block, the same for every matrix of the batch
    (so batching never changes a result) and independent of the global RNG (so a resumed run draws
    the same block)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    block = torch.randn(n, l, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return block.expand(*batch_shape, n, l)


def transpose_times(A: Tensor, P: Tensor) -> Tensor:
    """``Aᵀ P`` for a tall-skinny ``P`` (batched), computed as ``(Pᵀ A)ᵀ`` so that BLAS reads ``A``
    in its stored orientation, which CPU BLAS runs faster (docs/performance.md)."""
    return (P.mT @ A).mT


def _orth(X: Tensor) -> Tensor:
    return torch.linalg.qr(X, mode="reduced").Q


def top_singular(
    G: Tensor,
    k: int,
    *,
    init: Tensor | None = None,
    iters: int | None = None,
    oversample: int | None = None,
    tol: float | None = None,
    max_iters: int = 100,
    check_finite: bool = True,
) -> Triplets:
    """The top-``k`` singular triplets of ``G`` (batched over leading dims).

    Args:
        G: ``(..., m, n)``.
        k: number of triplets, ``1 ≤ k ≤ min(m, n)``.
        init: ``(..., n, j)`` start block, e.g. the previous step's ``V``; with ``j`` below the
            block width ``l = min(k + oversample, min(m, n))`` it is padded with fixed random
            columns, with ``j > l`` it is cut to ``l``.
        iters: power iterations before the Rayleigh–Ritz step; default 1 warm, 4 cold.
        oversample: extra block columns; default :func:`default_oversample`.
        tol: if given, iterate (``iters`` at a time, one host sync per check, up to ``max_iters``)
            until every residual ``‖Gvᵢ − σᵢuᵢ‖ ≤ tol·σ₁`` (a scale-free test: ``G`` is divided by
            its largest entry first, see :func:`_prescaled`). ``None``: exactly ``iters``
            iterations and no host sync, on ``G`` as it is: products with orthonormal blocks and
            LAPACK's QR and SVD are scale-safe, so results scale with ``G`` from 1e-30 to 1e30 in
            float32 without the extra pass over ``G`` (tested), which costs about half a warm
            nuclear step.
        check_finite: raise on NaN/Inf in ``G`` (one host sync).

    Returns:
        :class:`Triplets` ``(U, S, V)`` with ``k`` columns, descending ``S``, in float32 (float64
        for float64 ``G``).
    """
    check_matrix(G, "G", check_finite=check_finite)
    m, n = G.shape[-2:]
    check_positive_int(k, "k")
    if k > min(m, n):
        raise ValueError(f"k={k} is larger than min(m, n)={min(m, n)} for G of shape {tuple(G.shape)}")
    oversample = default_oversample(k) if oversample is None else oversample
    check_positive_int(oversample, "oversample", minimum=0)
    if iters is None:
        iters = 4 if init is None else 1
    check_positive_int(iters, "iters", minimum=0)
    if tol is not None:
        check_nonnegative(tol, "tol")
    l = min(k + oversample, m, n)
    A, scale = G.to(compute_dtype(G.dtype)), None
    if tol is not None:
        A, scale = _prescaled(A)
    Q = _start_block(A, l, init)
    done = 0
    while True:
        U, S, V = block_triplets(A, Q, iters)
        done += iters
        if tol is None or done >= max_iters or iters == 0:
            break
        # Rayleigh–Ritz makes Gᵀuᵢ = σᵢvᵢ exact; the residual left is Gvᵢ − σᵢuᵢ
        residual = torch.linalg.vector_norm(A @ V[..., :k] - U[..., :k] * S[..., None, :k], dim=-2)
        if bool((residual <= tol * S[..., :1]).all()):
            break
        Q = V
    S = S[..., :k] if scale is None else S[..., :k] * scale[..., None]
    return Triplets(U[..., :k], S, V[..., :k])


def _prescaled(A: Tensor) -> tuple[Tensor, Tensor]:
    """``(A / s, s)`` with ``s`` each matrix's largest absolute entry (1 for a zero matrix).

    The iteration then runs on entries of magnitude at most 1 whatever ``G``'s scale, so the
    float32 products, QRs and the squared residuals of the ``tol`` test neither underflow (entries
    of 1e-22: the residual's squares flush to 0 and the test passes before convergence) nor overflow
    (1e30): ``top_singular(c·G)`` gives ``c·S`` and the same ``U``, ``V`` as ``top_singular(G)`` up
    to rounding, for ``c·G`` from 1e-30 to 1e30 in float32. One reduction and one division over
    ``G`` on the device, no host read."""
    s = A.abs().amax(dim=(-2, -1))
    s = torch.where(s > 0, s, torch.ones_like(s))
    return A / s[..., None, None], s


def _start_block(A: Tensor, l: int, init: Tensor | None) -> Tensor:
    n = A.shape[-1]
    if init is None:
        return random_block(A.shape[:-2], n, l, dtype=A.dtype, device=A.device)
    if not isinstance(init, Tensor) or init.ndim < 2 or init.shape[-2] != n:
        shape = tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__
        raise ValueError(f"init must have shape (..., n={n}, j) to match G, got {shape}")
    Q = init.to(A.dtype).expand(*A.shape[:-2], *init.shape[-2:])
    if Q.shape[-1] > l:
        Q = Q[..., :l]
    elif Q.shape[-1] < l:
        pad = random_block(A.shape[:-2], n, l - Q.shape[-1], dtype=A.dtype, device=A.device)
        Q = torch.cat([Q, pad], dim=-1)
    return Q


def block_triplets(A: Tensor, Q: Tensor, iters: int, ops: RowCollectives = LOCAL) -> Triplets:
    """The top ``l = Q.shape[-1]`` triplets of ``A`` (``(k, m, n)``) after ``iters`` block power
    iterations from ``Q`` (``(k, n, l)``) and a Rayleigh–Ritz step, no checks and no host read.

    With ``A`` split by rows (``ops`` of :mod:`~steepest.directions.collectives`) ``A`` is this
    process's rows and so is the returned ``U``; ``S`` and ``V`` are the same on every process."""
    for _ in range(iters):
        Q = _orth(ops.sum(transpose_times(A, ops.orth(A @ Q))))
    return _rayleigh_ritz(A, Q, ops)


def _rayleigh_ritz(A: Tensor, Q: Tensor, ops: RowCollectives = LOCAL) -> Triplets:
    """Best rank-l triplets of ``A`` within the range of ``A Q``.

    With ``P = orth(AQ)`` and ``AᵀP = Q₂R`` (QR), ``PᵀA = Rᵀ Q₂ᵀ``, so the SVD ``Rᵀ = Ũ Σ W̃ᵀ`` of an
    ``l × l`` matrix gives ``U = PŨ`` and ``V = Q₂W̃``. (LAPACK's SVD of the wide ``l × n`` matrix
    ``PᵀA`` itself is erratically slow on CPUs for small ``l``.)"""
    P = ops.orth(A @ Q)
    Q2, R = torch.linalg.qr(ops.sum(transpose_times(A, P)), mode="reduced")
    Ub, S, Wh = torch.linalg.svd(R.mT)
    return Triplets(P @ Ub, S, Q2 @ Wh.mT)

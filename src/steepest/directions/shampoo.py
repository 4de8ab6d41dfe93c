"""Shampoo's two-sided preconditioned direction ``L^{-1/4} G R^{-1/4}`` (Gupta, Koren & Singer 2018).

With ``L = Σ GGᵀ`` and ``R = Σ GᵀG`` accumulated over steps, ``D = (L+εI)^{-1/4} G (R+εI)^{-1/4}``
is the exact minimiser of ``⟨G, Δ⟩ + ½‖L^{1/8} Δ R^{1/8}‖_F²`` (up to the sign ``Δ = −D``).
Without accumulation (``L = GGᵀ``, ``R = GᵀG``, ``ε = 0`` with pseudo-inverse roots) it is exactly
``U_r V_rᵀ`` (the lecture seed): Shampoo is Muon with memory.

Blocked Shampoo (for large dimensions; the cap is Distributed Shampoo's ``max_preconditioner_dim``,
Shi et al. 2023): the rows are cut into ``k_r`` consecutive blocks and the columns into ``k_c``,
and ``L``, ``R`` are replaced by their block-diagonal parts ``L_i = G_{i,:} G_{i,:}ᵀ`` and
``R_j = G_{:,j}ᵀ G_{:,j}``; then ``D_{ij} = L_i^{-1/4} G_{ij} R_j^{-1/4}``, which is the formula
above with ``blockdiag(L)``, ``blockdiag(R)``. One block each way is plain Shampoo.

Roots (:func:`inverse_root`): ``eigh`` in float32, redone in float64 for the matrices whose
float32 eigenvalues give a condition ``(λ_max+ε)/(λ_min+ε) > 1e4`` or, with ``ε = 0``, reach the
pseudo-inverse cutoff ``d·eps32·λ_max`` (measured: the float32 root's
relative Frobenius error is about ``2e-8·condition``, 1.3e-4 at 1e4 and d = 128, 2.7e-4 at d = 512,
2e-2 at 1e6), and for the whole batch when the float32 ``eigh`` does not converge. A float64 ``eigh``
that does not converge is retried on ``A + diag(δ·s·(1 + i/d))`` (``s`` the largest diagonal entry,
``δ = 1e-10``, then ``1e-7``): a backward perturbation of relative size ≤ 2δ that also splits
clusters of equal (e.g. zero) eigenvalues.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_matrix, check_nonnegative, check_square, compute_dtype

__all__ = [
    "shampoo_direction",
    "inverse_root",
    "block_partition",
    "block_statistics",
    "block_inverse_root",
    "block_preconditioned",
    "FLOAT32_CONDITION_LIMIT",
]

FLOAT32_CONDITION_LIMIT = 1e4  # above it a float32 eigh's root is off by more than ~3e-4 (relative, Frobenius)
JITTERS = (1e-10, 1e-7)  # relative diagonal jitters tried when a float64 eigh does not converge


def inverse_root(A: Tensor, p: float, *, eps: float = 0.0, check_finite: bool = True) -> Tensor:
    """``(A + εI)^{-1/p}`` for symmetric PSD ``A`` (batched; ``(A + Aᵀ)/2`` is used).

    Eigenvalues are clamped at 0 first (PSD round-off). With ``ε > 0`` every eigenvalue maps to
    ``(λ + ε)^{-1/p}`` (no cutoff). With ``ε = 0`` the root is the pseudo-inverse one: eigenvalues
    at or below ``d·eps_machine·λ_max`` (``eps_machine`` of the dtype the ``eigh`` ran in) map to 0.
    ``eigh`` runs in float32 (float64 input: float64), and in float64 for the matrices whose float32
    condition exceeds :data:`FLOAT32_CONDITION_LIMIT` (with ``ε = 0``: or that have an eigenvalue
    at float32's cutoff, so the float64 ``eigh`` decides which are zero) or when float32 does not
    converge (module docstring). Each matrix's root is independent of the rest of the batch. Returns ``A``'s dtype.
    """
    check_matrix(A, "A", check_finite=check_finite)
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be square (..., d, d), got shape {tuple(A.shape)}")
    check_nonnegative(eps, "eps")
    if not p > 0:
        raise ValueError(f"p must be > 0, got {p!r}")
    X = A.to(compute_dtype(A.dtype))
    return _inverse_root((X + X.mT) / 2, p, float(eps)).to(A.dtype)


def _eigh(A: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` (lower triangle); float32 that does not converge is redone in float64,
    float64 that does not converge is retried with the jitters of :data:`JITTERS`."""
    try:
        return torch.linalg.eigh(A)
    except torch.linalg.LinAlgError:
        if A.dtype != torch.float64:
            return _eigh(A.to(torch.float64))
    d = A.shape[-1]
    scale = A.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True).clamp(min=torch.finfo(A.dtype).tiny)
    spread = 1 + torch.arange(d, dtype=A.dtype, device=A.device) / d
    for jitter in JITTERS:
        try:
            return torch.linalg.eigh(A + torch.diag_embed(jitter * scale * spread))
        except torch.linalg.LinAlgError:
            continue
    raise torch.linalg.LinAlgError(
        f"eigh of a {d}x{d} Shampoo statistic did not converge, even in float64 with a relative diagonal jitter "
        f"of {JITTERS[-1]:g}; raise eps or lower max_preconditioner_dim"
    )


def _root_from_eigh(lam: Tensor, Q: Tensor, p: float, eps: float) -> Tensor:
    lam = lam.clamp(min=0) + eps
    inv = lam.clamp(min=torch.finfo(lam.dtype).tiny) ** (-1.0 / p)
    if eps == 0:  # pseudo-inverse: round-off eigenvalues of a singular matrix map to 0
        cutoff = lam.shape[-1] * torch.finfo(lam.dtype).eps * lam[..., -1:]
        inv = torch.where(lam > cutoff, inv, torch.zeros_like(inv))
    return (Q * inv.unsqueeze(-2)) @ Q.mT


def _inverse_root(A: Tensor, p: float, eps: float) -> Tensor:
    """The root of symmetric float32/float64 ``A`` (lower triangle read), in ``A``'s dtype; reads
    one flag back from the device for float32 input (whether any matrix needs float64)."""
    if A.dtype == torch.float64 or A.shape[-1] == 0:
        return _root_from_eigh(*_eigh(A), p, eps).to(A.dtype)
    try:
        lam, Q = torch.linalg.eigh(A)
    except torch.linalg.LinAlgError:  # which matrix failed is not reported: redo the batch in float64
        return _root_from_eigh(*_eigh(A.to(torch.float64)), p, eps).to(A.dtype)
    root = _root_from_eigh(lam, Q, p, eps)
    lam = lam.clamp(min=0)
    coarse = (lam[..., -1] + eps) / (lam[..., 0] + eps) > FLOAT32_CONDITION_LIMIT  # 0/0 (A = 0, ε = 0): False
    if eps == 0:  # which eigenvalues are zero is decided in float64 (float32's cutoff is 1.2e-4·λ_max at d = 1024)
        coarse |= lam[..., 0] <= lam.shape[-1] * torch.finfo(lam.dtype).eps * lam[..., -1]
    if bool(coarse.any()):
        root[coarse] = _root_from_eigh(*_eigh(A[coarse].to(torch.float64)), p, eps).to(root.dtype)
    return root


def shampoo_direction(G: Tensor, L: Tensor, R: Tensor, *, eps: float = 1e-12, check_finite: bool = True) -> Tensor:
    """``D = (L + εI)^{-1/4} · G · (R + εI)^{-1/4}`` (roots by :func:`inverse_root`).

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


# --- blocked Shampoo ---------------------------------------------------------------------------


def block_partition(d: int, max_dim: int | None) -> tuple[int, int]:
    """``(count, size)``: ``d`` indices cut into ``count`` consecutive blocks of ``size`` (the last
    one holds the remaining ``d − (count−1)·size ≥ 1``), ``size = ⌈d/⌈d/max_dim⌉⌉ ≤ max_dim`` so the
    blocks are nearly equal. ``max_dim=None``: one block."""
    if max_dim is None or d <= max_dim:
        return 1, d
    size = -(-d // -(-d // max_dim))
    return -(-d // size), size


def _row_blocks(X: Tensor, count: int, size: int) -> Tensor:
    """``(..., d, n) → (..., count, size, n)``, zero rows appended to fill the last block."""
    pad = count * size - X.shape[-2]
    return (F.pad(X, (0, 0, 0, pad)) if pad else X).unflatten(-2, (count, size))


def block_statistics(G: Tensor, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The block-diagonal parts of ``GGᵀ`` and ``GᵀG``: ``L_i = G_{i,:}G_{i,:}ᵀ`` as
    ``(..., k_r, b_r, b_r)`` and ``R_j = G_{:,j}ᵀG_{:,j}`` as ``(..., k_c, b_c, b_c)``, for the
    partitions ``rows = (k_r, b_r)``, ``cols = (k_c, b_c)`` of :func:`block_partition` (zero rows
    and columns fill the last block)."""
    X = _row_blocks(G, *rows)
    Y = _row_blocks(G.mT, *cols)
    return X @ X.mT, Y @ Y.mT


def block_inverse_root(A: Tensor, d: int, p: float, eps: float) -> Tensor:
    """``(A_i + εI)^{-1/p}`` of every block of ``A`` ``(..., k, b, b)`` from :func:`block_statistics`
    for a dimension ``d``: the last block's ``eigh`` sees only its ``d − (k−1)·b`` real indices, and
    its root is 0 on the fill. Roots as :func:`inverse_root` (float32/float64 ``A``; lower triangle)."""
    k, b = A.shape[-3], A.shape[-1]
    last = d - (k - 1) * b
    if last == b:
        return _inverse_root(A, p, eps)
    root = torch.zeros_like(A)
    if k > 1:
        root[..., : k - 1, :, :] = _inverse_root(A[..., : k - 1, :, :], p, eps)
    root[..., k - 1, :last, :last] = _inverse_root(A[..., k - 1, :last, :last].contiguous(), p, eps)
    return root


def block_preconditioned(L_root: Tensor, M: Tensor, R_root: Tensor) -> Tensor:
    """``D_{ij} = L_i^{-1/4} M_{ij} R_j^{-1/4}`` for ``M`` ``(..., m, n)`` and block roots
    ``(..., k_r, b_r, b_r)``, ``(..., k_c, b_c, b_c)`` (one block each way: ``L^{-1/4} M R^{-1/4}``)."""
    m, n = M.shape[-2:]
    kr, br = L_root.shape[-3], L_root.shape[-1]
    kc, bc = R_root.shape[-3], R_root.shape[-1]
    if kr == 1 and kc == 1:
        return L_root[..., 0, :, :] @ M @ R_root[..., 0, :, :]
    X = F.pad(M, (0, kc * bc - n, 0, kr * br - m))
    X = X.unflatten(-1, (kc, bc)).unflatten(-3, (kr, br)).transpose(-3, -2)  # (..., k_r, k_c, b_r, b_c)
    X = L_root.unsqueeze(-3) @ X @ R_root.unsqueeze(-4)
    return X.transpose(-3, -2).reshape(*M.shape[:-2], kr * br, kc * bc)[..., :m, :n]

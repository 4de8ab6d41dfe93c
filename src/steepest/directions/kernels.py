"""A Triton kernel for the symmetric products of the msgn polynomials.

Each quintic step forms ``A = XXᵀ`` and ``B = bA + cA²``; both are symmetric, so only the tiles on
and above the diagonal need computing: the kernel computes ``alpha·XXᵀ + beta·C`` for tiles
``(i, j)``, ``i ≤ j``, and writes each one twice (``(i, j)`` and its mirror ``(j, i)``). That saves
almost half of those two products' FLOPs (modded-nanogpt does the same; our own code). It is used
on CUDA when Triton is installed; :func:`symmetric_product` falls back to plain PyTorch, which is
also the reference the tests compare it to (under ``TRITON_INTERPRET=1`` on CPU).
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

__all__ = ["symmetric_product", "triton_available", "triton_symmetric_product", "use_symmetric_kernel"]

MIN_TRITON_SIZE = 256  # below this the plain matmul wins (launch overhead, tiny tiles)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_symmetric_kernel(X: Tensor) -> bool:
    """Whether the polynomial steps on ``X`` (``(b, m, n)``) take the Triton path."""
    return X.is_cuda and X.ndim == 3 and X.shape[-2] >= MIN_TRITON_SIZE and triton_available()


def symmetric_product(X: Tensor, alpha: float = 1.0, beta: float = 0.0, C: Tensor | None = None, *, use_triton: bool | None = None) -> Tensor:
    """``alpha·X Xᵀ + beta·C`` for ``X`` of shape ``(b, m, n)`` (``C``: ``(b, m, m)``, symmetric)."""
    if use_triton is None:
        use_triton = use_symmetric_kernel(X)
    if use_triton:
        return triton_symmetric_product(X, alpha, beta, C)
    if C is None or beta == 0:
        out = X @ X.mT
        return out if alpha == 1.0 else out * alpha
    return torch.baddbmm(C, X, X.mT, beta=beta, alpha=alpha)


_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import triton
    import triton.language as tl

    @triton.jit
    def syrk_kernel(
        x_ptr, c_ptr, out_ptr, M, N,
        stride_xb, stride_xm, stride_xn,
        stride_cb, stride_cm, stride_cn,
        stride_ob, stride_om, stride_on,
        alpha, beta,
        HAS_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        i = tl.program_id(0)
        j = tl.program_id(1)
        b = tl.program_id(2)
        if j < i:  # the mirror of tile (j, i) is written by that tile's program
            return
        rows = i * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = j * BLOCK_M + tl.arange(0, BLOCK_M)
        ks = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
        x_base = x_ptr + b * stride_xb
        for k0 in range(0, N, BLOCK_K):
            kk = k0 + ks
            a = tl.load(x_base + rows[:, None] * stride_xm + kk[None, :] * stride_xn, mask=(rows[:, None] < M) & (kk[None, :] < N), other=0.0)
            bt = tl.load(x_base + cols[None, :] * stride_xm + kk[:, None] * stride_xn, mask=(cols[None, :] < M) & (kk[:, None] < N), other=0.0)
            acc += tl.dot(a, bt)
        acc = acc * alpha
        inside = (rows[:, None] < M) & (cols[None, :] < M)
        if HAS_C:
            c = tl.load(c_ptr + b * stride_cb + rows[:, None] * stride_cm + cols[None, :] * stride_cn, mask=inside, other=0.0)
            acc += beta * c.to(tl.float32)
        out = acc.to(out_ptr.dtype.element_ty)
        o_base = out_ptr + b * stride_ob
        tl.store(o_base + rows[:, None] * stride_om + cols[None, :] * stride_on, out, mask=inside)
        if j > i:
            tl.store(o_base + cols[None, :] * stride_om + rows[:, None] * stride_on, out, mask=inside)

    _KERNEL = syrk_kernel
    return _KERNEL


def triton_symmetric_product(X: Tensor, alpha: float = 1.0, beta: float = 0.0, C: Tensor | None = None, block_m: int = 64, block_k: int = 32) -> Tensor:
    """The Triton path of :func:`symmetric_product` (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    if X.ndim != 3:
        raise ValueError(f"X must have shape (b, m, n), got {tuple(X.shape)}")
    b, m, n = X.shape
    out = torch.empty(b, m, m, device=X.device, dtype=X.dtype)
    has_c = C is not None and beta != 0
    Cc = C if has_c else out
    grid = ((m + block_m - 1) // block_m, (m + block_m - 1) // block_m, b)
    _kernel()[grid](
        X, Cc, out, m, n,
        *X.stride(), *Cc.stride(), *out.stride(),
        float(alpha), float(beta),
        HAS_C=has_c, BLOCK_M=block_m, BLOCK_K=block_k,
        **({} if os.environ.get("TRITON_INTERPRET") == "1" else {"num_warps": 4}),
    )
    return out

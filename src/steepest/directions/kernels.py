"""A Triton kernel for the symmetric products of the msgn polynomials.

Each quintic step forms ``A = XXᵀ`` and ``B = bA + cA²``; both are symmetric, so only the tiles on
and above the diagonal need computing: the kernel computes ``alpha·XXᵀ + beta·C`` for tiles
``(i, j)``, ``i ≤ j``, and writes each one twice (``(i, j)`` and its mirror ``(j, i)``). That saves
almost half of those two products' FLOPs (modded-nanogpt does the same; our own code).

**Opt-in.** The kernel has so far run only in Triton's CPU interpreter (``TRITON_INTERPRET=1``, the
tests), never on a GPU, so the default everywhere is plain ``torch`` matmuls. Enable it with
``enable_symmetric_kernel(True)`` or the environment variable ``STEEPEST_SYMMETRIC_KERNEL=1``; it
then serves batched (3-D) CUDA inputs with ``m ≥ 256`` when Triton is installed. Batch and row
offsets are 64-bit (``b·stride`` passes 2³¹ at e.g. 64 matrices of 4096×11008), float32 inputs
multiply in IEEE float32 (``tl.dot`` would use TF32 by default), and the launch runs on the input's
device. :func:`symmetric_product` without the kernel is plain PyTorch, the reference the tests
compare the kernel to.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import torch
from torch import Tensor

__all__ = [
    "enable_symmetric_kernel",
    "symmetric_kernel_enabled",
    "symmetric_product",
    "triton_available",
    "triton_symmetric_product",
    "use_symmetric_kernel",
]

MIN_TRITON_SIZE = 256  # below this the plain matmul wins (launch overhead, tiny tiles)
ENV_VARIABLE = "STEEPEST_SYMMETRIC_KERNEL"
_enabled: bool | None = None  # None: follow the environment variable


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def enable_symmetric_kernel(enabled: bool | None = True) -> None:
    """Opt in to (``True``) or out of (``False``) the Triton kernel for the msgn polynomials on CUDA;
    ``None`` returns to the environment variable ``STEEPEST_SYMMETRIC_KERNEL`` (``1`` enables)."""
    if enabled is not None and not isinstance(enabled, bool):
        raise ValueError(f"enabled must be True, False or None, got {enabled!r}")
    global _enabled
    _enabled = enabled


def symmetric_kernel_enabled() -> bool:
    """Whether the kernel is opted in (off by default: it has not been verified on a GPU yet)."""
    return _enabled if _enabled is not None else os.environ.get(ENV_VARIABLE, "0") == "1"


def use_symmetric_kernel(X: Tensor) -> bool:
    """Whether the polynomial steps on ``X`` (``(b, m, n)``) take the Triton path: opted in, CUDA,
    3-D, ``m ≥ 256`` and Triton installed."""
    return X.is_cuda and X.ndim == 3 and X.shape[-2] >= MIN_TRITON_SIZE and symmetric_kernel_enabled() and triton_available()


def symmetric_product(X: Tensor, alpha: float = 1.0, beta: float = 0.0, C: Tensor | None = None, *, use_triton: bool | None = None) -> Tensor:
    """``alpha·X Xᵀ + beta·C`` for ``X`` of shape ``(b, m, n)`` (``C``: ``(b, m, m)``, symmetric); the
    Triton kernel when ``use_triton`` (default: :func:`use_symmetric_kernel`), else plain PyTorch."""
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
        HAS_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    ):
        i = tl.program_id(0)
        j = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)  # 64-bit offsets: b·stride passes 2³¹ on large batches
        if j < i:  # the mirror of tile (j, i) is written by that tile's program
            return
        rows = (i * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        cols = (j * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        ks = tl.arange(0, BLOCK_K).to(tl.int64)
        acc = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
        x_base = x_ptr + b * stride_xb
        for k0 in range(0, N, BLOCK_K):
            kk = k0 + ks
            a = tl.load(x_base + rows[:, None] * stride_xm + kk[None, :] * stride_xn, mask=(rows[:, None] < M) & (kk[None, :] < N), other=0.0)
            bt = tl.load(x_base + cols[None, :] * stride_xm + kk[:, None] * stride_xn, mask=(cols[None, :] < M) & (kk[:, None] < N), other=0.0)
            acc += tl.dot(a, bt, input_precision=INPUT_PRECISION)
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
    """The Triton path of :func:`symmetric_product` (CUDA, or CPU under ``TRITON_INTERPRET=1``):
    float32 inputs multiply in IEEE float32, bf16/float16 in their own precision; accumulation in
    float32, the result in ``X``'s dtype; launched on ``X``'s device."""
    if X.ndim != 3:
        raise ValueError(f"X must have shape (b, m, n), got {tuple(X.shape)}")
    b, m, n = X.shape
    has_c = C is not None and beta != 0
    if has_c and (C.shape != (b, m, m) or C.device != X.device):
        raise ValueError(f"C must have shape {(b, m, m)} on {X.device}, got {tuple(C.shape)} on {C.device}")
    out = torch.empty(b, m, m, device=X.device, dtype=X.dtype)
    Cc = C if has_c else out
    grid = ((m + block_m - 1) // block_m, (m + block_m - 1) // block_m, b)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    with torch.cuda.device(X.device) if X.is_cuda else contextlib.nullcontext():  # the input's GPU, not the current one
        _kernel()[grid](
            X, Cc, out, m, n,
            *X.stride(), *Cc.stride(), *out.stride(),
            float(alpha), float(beta),
            HAS_C=has_c, BLOCK_M=block_m, BLOCK_K=block_k,
            INPUT_PRECISION="ieee" if X.dtype == torch.float32 else "tf32",  # tf32 is ignored for 16-bit inputs
            **({} if interpret else {"num_warps": 4}),
        )
    return out

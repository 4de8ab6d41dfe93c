"""The matrix sign ``msgn(G) = U Vᵀ`` of the compact SVD ``G = U Σ Vᵀ``.

Odd matrix polynomials act on the singular values only, ``p(UΣVᵀ) = U p(Σ) Vᵀ``, so after a
Frobenius pre-normalisation (all σ ≤ 1) a few polynomial steps push every σ towards 1 with
matmuls alone. Two schedules are provided, plus the exact SVD:

* ``"newton_schulz"``: Muon's quintic ``X ← aX + (bA + cA²)X``, ``A = XXᵀ``, with
  ``(a, b, c) = (3.4445, −4.7750, 2.0315)`` every step (Jordan et al. 2024). It converges only to
  σ ∈ [~0.7, ~1.2], by design.
* ``"polar_express"``: a different ``(a, b, c)`` per step, each optimal for the interval the previous
  step leaves (Amsel et al. 2025, the tuple used by modded-nanogpt and dion), after normalising by
  ``1.02·‖X‖_F``. Same cost, closer to ``UVᵀ``. Steps beyond the fifth use the quintic
  ``(15, −10, 3)/8``, which has ``p(1) = 1, p′(1) = 0`` and so converges to exactly 1.
* ``"svd"``: exact, in float32 (float64 for float64 input); singular values below
  ``max(m, n)·eps·σ₁`` count as zero, so a rank-deficient ``G`` gives ``U_r V_rᵀ``.

Tall matrices are transposed first so that the Gram matrix ``XXᵀ`` is the smaller one.

**Scale.** ``msgn(cG) = msgn(G)`` for every ``c > 0``, and so is the computed result: a Frobenius
norm in float32/bf16 overflows once ``‖G‖_F ≳ 1.8e19`` and its squares underflow below ~1e-19, so a
matrix whose largest entry ``a`` is not in ``[2⁻²³, 2⁶⁰/√(mn))`` (Newton–Schulz; ``torch.optim.Muon``'s
clamp of the norm at 1e-7 lies below it) or ``[2⁻⁶⁰, 2⁶⁰/√(mn))`` (Polar Express) is first multiplied
by the power of two ``2⁻ᵏ`` that brings ``a`` into ``[½, 1)``. The test and the scaling run on the
device (no host read: a reduction for ``a``, one multiply). A power of two changes no significand bit,
so inside those ranges Newton–Schulz in bf16 stays ``torch.optim.Muon``'s update bit for bit.
Inputs whose largest entry is below float32's smallest normal number (1.2e-38) are scaled by 2¹²⁶
only. The SVD method is pre-scaled the same way (always).

**Precision.** :func:`default_iteration_dtype` picks bf16 where the hardware multiplies bf16
natively (CUDA from compute capability 8.0; CPUs with AMX tiles or AVX512-BF16, where bf16 matmuls
run ~4× faster than float32) and float32 elsewhere (AVX2 CPUs emulate bf16, many times slower).
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
    "cpu_has_native_bf16",
    "power_of_two_scale",
    "largest_entry",
    "cast_keeps_range",
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
CONVERGENT_QUINTIC = (15 / 8, -10 / 8, 3 / 8)

# Largest entries a in [low, high/√(mn)) need no pre-scaling (module docstring, "Scale"): the
# squares of the norm neither overflow float32 nor underflow, and the norm stays above the
# Newton–Schulz clamp (1e-7 < 2⁻²³).
SAFE_ENTRY = {"newton_schulz": (2.0**-23, 2.0**60), "polar_express": (2.0**-60, 2.0**60)}
# The same for Frobenius norms in [low, high): the CPU's test (see _normalise). Below 2⁻⁴⁰ the largest
# squares (≥ 2⁻⁸⁰/mn) could approach float32's subnormals; the entry test decides there.
SAFE_NORM = {"newton_schulz": (2.0**-23, 2.0**60), "polar_express": (2.0**-40, 2.0**60)}
_MAX_SHIFT = 126  # 2**126 is the largest power of two every float32/bf16 scale factor may take

Scratch = Callable[[str, tuple[int, ...], torch.dtype], Tensor]  # (name, shape, dtype) -> a reusable buffer

CPU_BF16_PROBES = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")


@torch.compiler.assume_constant_result  # a compiled step takes it as a constant: no graph break
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively: AMX tiles or AVX512-BF16, as reported by
    ``torch.cpu._is_amx_tile_supported()`` / ``torch.cpu._is_avx512_bf16_supported()`` (a probe
    missing from this torch counts as absent)."""
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in CPU_BF16_PROBES)


def default_iteration_dtype(device: torch.device | str) -> torch.dtype:
    """The matmul precision of the iterative ``msgn`` methods when none is given: bf16 on CUDA
    devices of compute capability ≥ 8.0 and on CPUs with native bf16 matmuls
    (:func:`cpu_has_native_bf16`: AMX or AVX512-BF16, bf16 ~4× faster than float32 there);
    float32 elsewhere (AVX2 CPUs emulate bf16 and run it several times slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float32
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


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
        dtype: matmul precision of the iterative methods; default :func:`default_iteration_dtype`
            (bf16 on CUDA and on CPUs with native bf16 matmuls, float32 elsewhere).
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
    X = X * power_of_two_scale(X)
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    rtol = max(X.shape[-2:]) * torch.finfo(X.dtype).eps
    keep = (S > rtol * S[..., :1]).to(X.dtype)
    return ((U * keep.unsqueeze(-2)) @ Vh).to(G.dtype)


def largest_entry(X: Tensor) -> Tensor:
    """``max |X_ij|`` per matrix of ``X`` (``(..., m, n)``), shape ``(..., 1, 1)``, in float32 (float64
    for float64 ``X``); NaN if the matrix holds one."""
    if X.ndim == 2:
        lo, hi = torch.aminmax(X)  # one pass
        amax = torch.maximum(hi, -lo).reshape(1, 1)
    else:
        amax = torch.maximum(X.amax(dim=(-2, -1), keepdim=True), -X.amin(dim=(-2, -1), keepdim=True))
    return amax.to(torch.float64 if X.dtype == torch.float64 else torch.float32)


def _power_of_two(amax: Tensor, dtype: torch.dtype) -> Tensor:
    _, exponent = torch.frexp(amax)  # amax = f·2^e, f ∈ [½, 1); e = 0 for 0
    shift = (-exponent).clamp(max=1022 if amax.dtype == torch.float64 else _MAX_SHIFT)
    return torch.ldexp(torch.ones_like(amax), shift).to(dtype)


def power_of_two_scale(X: Tensor) -> Tensor:
    """Per matrix of ``X`` (``(..., m, n)``), the power of two ``2⁻ᵏ`` (shape ``(..., 1, 1)``, ``X``'s
    dtype) that brings the largest ``|entry|`` into ``[½, 1)``; 1 for a zero matrix; at most 2¹²⁶
    (float32/bf16 range). Multiplying by it is exact."""
    return _power_of_two(largest_entry(X), X.dtype)


def _frobenius(X: Tensor) -> Tensor:
    # 2-D: Tensor.norm(), torch.optim.Muon's own call (bit parity); batched: one norm per matrix
    return X.norm() if X.ndim == 2 else torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)


def _normalise(X: Tensor, method: str, inplace: bool = False) -> Tensor:
    """``X/‖X‖_F`` (Newton–Schulz, the norm clamped at 1e-7 as in ``torch.optim.Muon``) or
    ``X/(1.02·‖X‖_F)`` (Polar Express), per matrix; a matrix whose largest entry lies outside
    ``SAFE_ENTRY[method]`` is first multiplied by :func:`power_of_two_scale` (decided on the
    device: no host read). On a CPU, where reading a value costs nothing, the norms are computed
    first and, when all lie in ``SAFE_NORM[method]`` (then no square over- or underflowed), used as
    they are: the same result without the pass for the largest entries. ``inplace``: ``X`` may be
    overwritten (a copy the caller owns)."""
    if X.device.type == "cpu" and not torch.compiler.is_compiling():
        norm = _frobenius(X)
        if _norms_in_range(norm, method):
            return _divide(X, norm, method, inplace)
    amax = largest_entry(X)
    low, high = SAFE_ENTRY[method]
    safe = (amax >= low) & (amax * math.sqrt(X.shape[-2] * X.shape[-1]) < high)
    X = X * torch.where(safe, torch.ones_like(amax), _power_of_two(amax, amax.dtype)).to(X.dtype)
    return _divide(X, _frobenius(X), method, inplace=True)


def _norms_in_range(norm: Tensor, method: str) -> bool:
    """Whether every norm lies in ``SAFE_NORM[method]`` (NaN and ±Inf do not): a host read, made on
    CPUs only, where it costs nothing."""
    low, high = SAFE_NORM[method]
    return bool(((norm >= low) & (norm < high)).all())


def _divide(X: Tensor, norm: Tensor, method: str, inplace: bool) -> Tensor:
    if method == "newton_schulz":
        norm = norm.clamp(min=NEWTON_SCHULZ_EPS)
    else:
        norm = (norm * POLAR_EXPRESS_SAFETY).clamp(min=torch.finfo(X.dtype).tiny)  # msgn(0) = 0
    return X.div_(norm) if inplace else X / norm


def msgn_polynomial(
    G: Tensor, method: str, steps: int, dtype: torch.dtype, out: Tensor | None = None, scratch: Scratch | None = None
) -> Tensor:
    """The iterative methods of :func:`msgn` without input checks (what optimizers call). ``G`` is
    not modified; with ``G.dtype == dtype`` it is read in place (no copy). With ``out`` (``G``'s
    shape) the result is written there, cast to its dtype, and ``out`` returned. ``scratch(name,
    shape, dtype)``, for a 2-D ``G`` with ``out``: where the iterates and Gram matrices are
    written (buffers kept between calls, see :meth:`~steepest.optim.base.MatrixOptimizer.scratch`)
    instead of new tensors; the same values."""
    if not cast_keeps_range(G.dtype, dtype):
        G = G * power_of_two_scale(G)  # e.g. float64 beyond float32's range: scale before the cast
    transpose = G.shape[-2] > G.shape[-1]
    if scratch is not None and out is not None and G.ndim == 2:
        X = scratch("cast", tuple(G.shape), dtype).copy_(G)  # G's layout: a tall one is iterated as a transposed view,
        _msgn_2d_into(X.mT if transpose else X, method, steps, out.mT if transpose else out, scratch)  # as torch.optim.Muon does
        return out
    X = G.to(dtype)
    owned = X is not G
    if transpose:
        X = X.mT
    batch_shape = X.shape[:-2]
    # one matrix: 2-D matmuls (addmm, torch.optim.Muon's calls); several: one batched call per product
    X = X.reshape(X.shape[-2:]) if math.prod(batch_shape) == 1 else X.reshape(-1, *X.shape[-2:])
    # torch.optim.Muon's exact operations on the Newton–Schulz path, so that our update reproduces it
    # bit for bit in bf16 (the pre-scaling only acts where its norm would under/overflow)
    X = _normalise(X, method, inplace=owned)
    for a, b, c in polynomial_coefficients(method, steps):
        X = _quintic_step(X, a, b, c)
    X = X.reshape(*batch_shape, *X.shape[-2:])
    if transpose:
        X = X.mT
    if out is not None:
        return out.copy_(X)
    return X.to(G.dtype)


def _msgn_2d_into(X: Tensor, method: str, steps: int, out: Tensor, scratch: Scratch) -> None:
    """:func:`msgn_polynomial` of a wide (or square) 2-D ``X``, already cast and overwritable, into
    ``out``, with the products of :func:`_quintic_step` written into scratch buffers."""
    m, n = X.shape
    A, B = scratch("gram", (m, m), X.dtype), scratch("poly", (m, m), X.dtype)
    iterates = (scratch("iterate", (m, n), X.dtype), scratch("next", (m, n), X.dtype))  # written in turn
    X = _normalise(X, method, inplace=True)
    # torch.optim.Muon's calls (its bits on the Newton–Schulz path). Folding a·X into B's diagonal,
    # (aI + B)·X, would save addmm's copy of X into Y, but rounding a + Bᵢᵢ to bf16 doubled the
    # bf16 iteration's error against float64 (1.2% → 2.5–5%).
    for step, (a, b, c) in enumerate(polynomial_coefficients(method, steps)):
        Y = iterates[step % 2]
        torch.mm(X, X.mT, out=A)
        torch.addmm(A, A, A, beta=b, alpha=c, out=B)
        torch.addmm(X, B, X, beta=a, out=Y)
        X = Y
    out.copy_(X)


def _exponent_range(dtype: torch.dtype) -> int:
    return math.frexp(torch.finfo(dtype).max)[1]


def cast_keeps_range(source: torch.dtype, target: torch.dtype) -> bool:
    """Whether every finite ``source`` value stays finite in ``target`` (as float32 → bf16 does):
    then a caller may cast before :func:`msgn_polynomial`, which otherwise pre-scales first."""
    return _exponent_range(target) >= _exponent_range(source)


def _quintic_step(X: Tensor, a: float, b: float, c: float) -> Tensor:
    """``aX + (bA + cA²)X`` with ``A = XXᵀ``: 3 matmuls, for 2-D or 3-D ``X``.

    With the Triton kernel opted in (:func:`~steepest.directions.kernels.enable_symmetric_kernel`),
    CUDA batches compute only the upper triangles of the symmetric products ``A`` and ``bA + cA·Aᵀ``."""
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

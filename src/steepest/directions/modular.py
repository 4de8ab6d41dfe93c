"""The per-role dual maps of modular steepest descent: one norm for every kind of layer.

The modular seed (Bernstein & Newhouse 2024, "Modular duality in deep learning"; Large et al.
2024, "Scalable optimization in the modular norm") gives each layer the operator norm induced by
the feature norms it maps between, and steps ``ΔW_l ∝ dualize_l(G_l)``. Each function here is the
duality map ``D = argmax_{‖D‖ = 1} ⟨G, D⟩`` of one such norm, so that ``⟨G, D⟩ = ‖G‖†`` and
``‖D‖ = 1`` for every nonzero ``G`` (the tests check both). For a weight ``(…, m, n)``, ``m`` is
the fan-out and ``n`` the fan-in (a conv weight is viewed ``(out, in·kh·kw)``).

==================  ========================================  ===============================
function            D                                         norm of ``W``
==================  ========================================  ===============================
``rms_to_rms``      ``√(m/n)·msgn(G)``                        RMS→RMS: ``√(n/m)·‖W‖₂``
``l1_to_rms``       row ``i``: ``√n·G_i/‖G_i‖₂``              ℓ1→RMS: ``maxᵢ ‖W_i‖₂/√n``
``sign_head``       ``sign(G)/n``                             ``n·maxᵢⱼ |W_ij|``
``rms_to_linf``     row ``i``: ``G_i/(√n·‖G_i‖₂)``            RMS→ℓ∞: ``√n·maxᵢ ‖W_i‖₂``
``rms_vector``      ``g/RMS(g)``                              RMS: ``‖b‖₂/√N``
==================  ========================================  ===============================

A zero gradient (or a zero row, for the row maps) maps to zero, never NaN, and every map is
invariant to the gradient's scale from 1e-30 to 1e30: rows are first multiplied by the power of
two that brings their largest entry into ``[½, 1)`` (exact), as :func:`~steepest.directions.msgn`
does for whole matrices.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_matrix, compute_dtype
from .msgn import msgn

__all__ = ["rms_to_rms", "l1_to_rms", "sign_head", "rms_to_linf", "rms_vector", "ATOMS", "unit_rows"]


def unit_rows(G: Tensor) -> Tensor:
    """``G_i/‖G_i‖₂`` for every row (last dimension) of ``G``, in float32 (float64 for float64
    ``G``); zero rows stay zero. Each row is pre-scaled by a power of two so that its norm neither
    overflows nor underflows (the result is independent of ``G``'s scale)."""
    X = G.to(compute_dtype(G.dtype))
    if X.numel() == 0:
        return X
    amax = X.abs().amax(dim=-1, keepdim=True)
    _, exponent = torch.frexp(amax)  # amax = f·2^e with f in [½, 1); e = 0 for a zero row
    limit = 1022 if X.dtype == torch.float64 else 126
    X = torch.ldexp(X, (-exponent).clamp(min=-limit, max=limit).to(X.dtype))
    norm = torch.linalg.vector_norm(X, dim=-1, keepdim=True)
    return X / norm.clamp(min=torch.finfo(X.dtype).tiny)


def rms_to_rms(G: Tensor, *, method: str = "polar_express", steps: int = 5, dtype: torch.dtype | None = None, check_finite: bool = True) -> Tensor:
    """Hidden ``Linear``/conv layers, RMS→RMS: ``D = √(m/n)·msgn(G)``.

    ``‖W‖_{RMS→RMS} = √(n/m)·‖W‖₂`` (spectral norm ``‖·‖₂``), dual norm ``√(m/n)·‖G‖_*``
    (modular seed; modula's ``Linear``, Scion's ``Spectral``). A conv weight is the matrix from
    a patch (``in·kh·kw`` values) to an output pixel, viewed ``(out, in·kh·kw)``: ``n`` counts the
    kernel's taps. Modula v1 and Scion's ``SpectralConv`` use ``√(out/in)/k²`` instead, a further
    ``1/k`` smaller: that bounds ``Σ_taps ‖W_t‖`` by the triangle inequality over the ``k²`` taps.
    The patch norm is the one this map is exact for, it already bounds the worst alignment of the
    taps (an input constant over the patch: ``‖Σ_t D_t‖₂ ≤ k·‖D‖₂``), and it is the scale
    the library's Muon family takes on the same view; a network of one kernel size recovers Scion's
    factor with the radius. See :func:`~steepest.directions.msgn` for ``method``, ``steps``, ``dtype``.
    """
    check_matrix(G, "G", check_finite=check_finite)
    m, n = G.shape[-2:]
    return msgn(G, method=method, steps=steps, dtype=dtype, check_finite=False) * math.sqrt(m / n)


def l1_to_rms(G: Tensor, *, check_finite: bool = True) -> Tensor:
    """Input embeddings ``(vocab, d)``, ℓ1→RMS: row ``i`` becomes ``√d·G_i/‖G_i‖₂``.

    An embedding maps the one-hot ``e_i`` to its row ``W_i``, so ``‖W‖_{ℓ1→RMS} = maxᵢ RMS(W_i)
    = maxᵢ ‖W_i‖₂/√d``, whose dual norm is ``√d·Σᵢ ‖G_i‖₂``. Rows without gradient (tokens not
    in the batch) stay zero (modula's ``Embed``, Scion's ``ColNorm(transpose=True)``). Also the map
    of position embeddings and CLS tokens (one row per position), and, for one row, of a bias."""
    check_matrix(G, "G", check_finite=check_finite, min_ndim=1)
    return (unit_rows(G) * math.sqrt(G.shape[-1])).to(G.dtype)


def sign_head(G: Tensor, *, check_finite: bool = True) -> Tensor:
    """Output heads, Scion's ``Sign``: ``D = sign(G)/n``; a 1-D ``g`` (a bias: fan-in 1) gives ``sign(g)``.

    The norm ``n·maxᵢⱼ |W_ij|`` is the ℓ1→ℓ∞ operator norm with the input measured by its mean
    absolute value ``‖x‖₁/n`` (which never exceeds its RMS); its dual norm is ``‖G‖₁/n``
    (Pethick et al. 2025, "Training deep learning models with norm-constrained LMOs")."""
    check_matrix(G, "G", check_finite=check_finite, min_ndim=1)
    n = G.shape[-1] if G.ndim >= 2 else 1
    return torch.sign(G) / n


def rms_to_linf(G: Tensor, *, check_finite: bool = True) -> Tensor:
    """Output heads, row-normalised (Scion's ``RowNorm``): row ``i`` becomes ``G_i/(√n·‖G_i‖₂)``.

    ``‖W‖_{RMS→ℓ∞} = sup_{RMS(x)=1} maxᵢ |W_i·x| = √n·maxᵢ ‖W_i‖₂`` bounds every logit by the
    input's RMS; its dual norm is ``Σᵢ ‖G_i‖₂/√n``. On a ``(vocab, d)`` matrix it is ``d`` times
    the embedding's ℓ1→RMS norm: the two roles of a tied weight share this direction."""
    check_matrix(G, "G", check_finite=check_finite)
    return (unit_rows(G) / math.sqrt(G.shape[-1])).to(G.dtype)


def rms_vector(g: Tensor, *, check_finite: bool = True) -> Tensor:
    """1-D parameters (biases, norm gains), Scion's ``BiasRMS``: ``D = g/RMS(g) = √N·g/‖g‖₂``.

    A bias maps the constant input 1 to ``b``: its 1→RMS norm is ``RMS(b) = ‖b‖₂/√N``, with dual
    norm ``√N·‖g‖₂``. Any shape: the norm is over all ``N`` entries."""
    check_matrix(g, "g", check_finite=check_finite, min_ndim=0)
    if g.numel() == 0:
        return g.clone()
    flat = g.reshape(1, -1)
    return (unit_rows(flat) * math.sqrt(flat.shape[-1])).reshape(g.shape).to(g.dtype)


# name -> duality map: what the optimizer's ``atom`` options name
ATOMS = {
    "spectral": rms_to_rms,
    "embed": l1_to_rms,
    "sign": sign_head,
    "rownorm": rms_to_linf,
    "rms": rms_vector,
}

"""Muon's direction: steepest descent under the spectral / RMS→RMS norm.

For ``W`` mapping ``fan_in = n`` inputs to ``fan_out = m`` outputs,
``‖Δ‖_{RMS→RMS} = √(n/m)·‖Δ‖₂``; its duality map is ``√(m/n)·UVᵀ``, and the exact minimiser of
``⟨G, Δ⟩ + λ/2·‖Δ‖²_{RMS→RMS}`` is ``−(m/n)(‖G‖_*/λ)·UVᵀ``. Muon keeps the duality map and
drops the dual norm ``‖G‖_*`` into the learning rate (Bernstein & Newhouse 2024; the lecture seed's
``ΔW = −η·√(fan_out/fan_in)·UVᵀ``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_choice, check_matrix
from .msgn import msgn

__all__ = ["spectral_direction", "spectral_scale", "SPECTRAL_SCALES"]

SPECTRAL_SCALES = ("rms_to_rms", "original", "match_adamw")


def spectral_scale(shape: tuple[int, ...] | torch.Size, scale: str = "rms_to_rms") -> float:
    """The factor on ``msgn(G)`` for a ``(..., m, n)`` weight (``m = fan_out``, ``n = fan_in``).

    * ``"rms_to_rms"``: ``√(m/n)``, the RMS→RMS duality map (the seed's formula).
    * ``"original"``: ``√max(1, m/n)`` (KellerJordan/Muon, ``torch.optim.Muon``'s default).
    * ``"match_adamw"``: ``0.2·√max(m, n)``, an update RMS of ~0.2 like AdamW's (Moonlight, Liu et al. 2025).
    """
    check_choice(scale, "scale", SPECTRAL_SCALES)
    m, n = shape[-2], shape[-1]
    if scale == "rms_to_rms":
        return math.sqrt(m / n)
    if scale == "original":
        return math.sqrt(max(1.0, m / n))
    return 0.2 * math.sqrt(max(m, n))


def spectral_direction(
    G: Tensor,
    *,
    scale: str = "rms_to_rms",
    method: str = "polar_express",
    steps: int = 5,
    dtype: torch.dtype | None = None,
    check_finite: bool = True,
) -> Tensor:
    """``D = s(m, n)·msgn(G)`` with ``s`` from :func:`spectral_scale`; see :func:`~steepest.directions.msgn`
    for ``method``, ``steps`` and ``dtype``. Returns a tensor of ``G``'s shape and dtype."""
    check_matrix(G, "G", check_finite=check_finite)
    factor = spectral_scale(G.shape, scale)
    return msgn(G, method=method, steps=steps, dtype=dtype, check_finite=False) * factor

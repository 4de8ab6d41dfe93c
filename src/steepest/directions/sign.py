"""Sign descent: steepest descent under the ℓ1→ℓ∞ operator norm (the largest entry).

``‖Δ‖_{ℓ1→ℓ∞} = max_ij |Δ_ij|``; its dual is the entrywise ``‖G‖₁`` and its duality map is
``sign(G)``, so ``argmin_Δ ⟨G, Δ⟩ + λ/2·‖Δ‖²_{ℓ1→ℓ∞} = −(‖G‖₁/λ)·sign(G)`` (modular seed). Adam
with β1 = β2 = 0 is this update, per matrix, with ``‖G‖₁`` dropped into the learning rate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_matrix

__all__ = ["sign_direction"]


def sign_direction(G: Tensor, *, check_finite: bool = True) -> Tensor:
    """``D = sign(G)`` (entries in {−1, 0, 1}), for a tensor of any shape."""
    check_matrix(G, "G", check_finite=check_finite, min_ndim=1)
    return torch.sign(G)

"""NorMuon's per-row normalisation of an orthogonalised update.

NorMuon (Li et al. 2025, "NorMuon: Making Muon more efficient and scalable", arXiv 2510.05491;
modded-nanogpt record #41) keeps, per weight matrix, an EMA ``v`` of the mean square of each row of
``U = msgn(M)`` and divides the rows by its root, an Adam-like second moment per output neuron, then
restores the Frobenius norm so that the step size stays Muon's:

.. math::
    v \\leftarrow \\beta_2 v + (1-\\beta_2)\\,\\tfrac{1}{n}\\textstyle\\sum_j U_{ij}^2,\\quad
    \\hat U = \\frac{U}{\\sqrt{v} + \\epsilon},\\quad
    \\hat U \\leftarrow \\hat U \\cdot \\frac{\\|U\\|_F}{\\|\\hat U\\|_F}.

``msgn`` equalises the singular values, not the rows: the rows of ``U`` of a gradient whose rows
differ in scale keep different norms, and NorMuon's rows move at equal RMS over time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_matrix, compute_dtype

__all__ = ["row_normalized", "NORMUON_BETA2", "NORMUON_EPS"]

NORMUON_BETA2 = 0.95  # microsoft/dion's default (modded-nanogpt uses 0.9)
NORMUON_EPS = 1e-8


def row_normalized(U: Tensor, v: Tensor, beta2: float = NORMUON_BETA2, eps: float = NORMUON_EPS, *, check: bool = True) -> tuple[Tensor, Tensor]:
    """``(Û, v')``: NorMuon's update from ``U`` (``(..., m, n)``, an orthogonalised momentum) and the
    row second moments ``v`` (``(..., m)``, zero at the start); see the module doc.

    ``Û`` has ``U``'s shape and dtype and ``‖Û‖_F = ‖U‖_F`` (zero for ``U = 0``, never NaN); ``v'`` is
    in float32 (float64 for float64 ``U``). Batched over leading dimensions, no host read."""
    if check:
        check_matrix(U, "U", check_finite=False)
        if not isinstance(v, Tensor) or tuple(v.shape) != tuple(U.shape[:-1]):
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"v must have shape {tuple(U.shape[:-1])} (one entry per row of U), got {shape}")
    X = U.to(compute_dtype(U.dtype))
    row_squares = X.square().sum(dim=-1)  # (..., m): the one reduction over U
    v = torch.lerp(v.to(X.dtype), row_squares / X.shape[-1], 1 - beta2)
    divisor = v.sqrt() + eps
    # ‖Û‖_F² = Σ_i ‖U_i‖²/divisor_i², so the rescaling needs no second pass over the matrix
    norm_u = row_squares.sum(dim=-1, keepdim=True).sqrt()
    norm_y = (row_squares / divisor.square()).sum(dim=-1, keepdim=True).sqrt()
    factor = norm_u / norm_y.clamp(min=torch.finfo(X.dtype).tiny) / divisor
    return (X * factor.unsqueeze(-1)).to(U.dtype), v

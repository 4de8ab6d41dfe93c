"""Input validation shared by the direction functions: clear errors that name the argument
(the tensor checks; option checks are :mod:`steepest.validation`'s)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..validation import check_choice, check_int as check_positive_int

__all__ = ["check_matrix", "check_square", "check_choice", "check_nonnegative", "check_positive_int", "compute_dtype"]


def check_matrix(G: Tensor, name: str = "G", *, check_finite: bool = True, min_ndim: int = 2) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``G`` is a real floating tensor of shape ``(..., m, n)``.

    ``check_finite`` reads one boolean back from the device (a host sync); optimizers, which
    check their gradients in one batched test of their own, pass ``False``.
    """
    if not isinstance(G, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(G).__name__}")
    if G.is_sparse:
        raise ValueError(f"{name} is a sparse tensor; convert it with {name}.to_dense() first")
    if G.is_complex() or not G.is_floating_point():
        raise ValueError(f"{name} must be a real floating-point tensor, got dtype {G.dtype}")
    if G.ndim < min_ndim:
        raise ValueError(
            f"{name} must have shape (..., m, n) (at least {min_ndim} dims), got shape {tuple(G.shape)}; "
            "view a vector as (1, n) and a conv weight as (out, in*kh*kw)"
        )
    if min_ndim >= 2 and 0 in G.shape[-2:]:
        raise ValueError(f"{name} has an empty matrix dimension: shape {tuple(G.shape)}")
    if check_finite and G.numel() and not bool(torch.isfinite(G).all()):
        raise ValueError(
            f"{name} contains NaN or Inf; find the non-finite gradient (e.g. lower the learning rate "
            "or enable gradient clipping) before computing a direction"
        )


def check_square(A: Tensor, name: str, size: int, batch_shape: torch.Size, *, check_finite: bool = True) -> None:
    """``A`` must be ``(..., size, size)`` with leading dims broadcastable to ``batch_shape``."""
    check_matrix(A, name, check_finite=check_finite)
    if A.shape[-2:] != (size, size):
        raise ValueError(f"{name} must have shape (..., {size}, {size}) to match G, got {tuple(A.shape)}")
    try:
        torch.broadcast_shapes(A.shape[:-2], batch_shape)
    except RuntimeError:
        raise ValueError(
            f"{name}'s batch dims {tuple(A.shape[:-2])} do not broadcast with G's {tuple(batch_shape)}"
        ) from None


def check_nonnegative(value: float, name: str) -> None:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = float(value)
    if not isinstance(value, (int, float)) or value != value or value < 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision for decompositions (QR, SVD, eigh, Cholesky): float64 stays, the rest use float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32

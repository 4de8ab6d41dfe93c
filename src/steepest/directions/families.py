"""Test matrices with known structure, shared by the test suite and the ``python -m
steepest.directions`` demo: Gaussian, ill-conditioned (κ = 1e6), tall, wide, rank-deficient (exact
zeros in Σ), zero, a 1×n vector and a conv weight flattened to ``(out, in·kh·kw)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["FAMILIES", "matrix_family", "matrix_with_spectrum", "random_orthonormal"]

FAMILIES = ("gaussian", "ill_conditioned", "tall", "wide", "rank_deficient", "zero", "vector", "conv")


def random_orthonormal(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """A ``rows × cols`` float64 matrix with orthonormal columns (``cols ≤ rows``)."""
    Q, R = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return Q * torch.sign(torch.diagonal(R)).unsqueeze(0)


def matrix_with_spectrum(m: int, n: int, S: Tensor, generator: torch.Generator) -> Tensor:
    """``U diag(S) Vᵀ`` in float64 with random orthonormal ``U`` (m × k) and ``V`` (n × k)."""
    k = S.shape[-1]
    return (random_orthonormal(m, k, generator) * S.to(torch.float64)) @ random_orthonormal(n, k, generator).T


def matrix_family(name: str, *, seed: int = 0, batch: tuple[int, ...] = ()) -> Tensor:
    """A float64 matrix (or a batch of them, shape ``(*batch, m, n)``) of family ``name``."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; accepted values: {', '.join(FAMILIES)}")
    gen = torch.Generator().manual_seed(seed)
    count = 1
    for b in batch:
        count *= b
    mats = [_one(name, gen) for _ in range(count)]
    out = torch.stack(mats)
    return out.reshape(*batch, *out.shape[-2:])


def _one(name: str, gen: torch.Generator) -> Tensor:
    f64 = torch.float64
    if name == "gaussian":
        return torch.randn(96, 160, generator=gen, dtype=f64)
    if name == "ill_conditioned":
        return matrix_with_spectrum(128, 128, torch.logspace(0, -6, 128, dtype=f64), gen)
    if name == "tall":
        return torch.randn(300, 60, generator=gen, dtype=f64)
    if name == "wide":
        return torch.randn(40, 250, generator=gen, dtype=f64)
    if name == "rank_deficient":
        return torch.randn(80, 10, generator=gen, dtype=f64) @ torch.randn(10, 120, generator=gen, dtype=f64)
    if name == "zero":
        return torch.zeros(32, 48, dtype=f64)
    if name == "vector":
        return torch.randn(1, 200, generator=gen, dtype=f64)
    return torch.randn(64, 64 * 3 * 3, generator=gen, dtype=f64) / 24  # conv 64→64, 3×3

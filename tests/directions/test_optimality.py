"""Each direction is the exact minimiser it claims: ``f(Δ*) ≤ f(Δ* + εP)`` for random perturbations
``P`` at several scales, with ``f(Δ) = ⟨G, Δ⟩ + ½‖Δ‖²`` (λ = 1) under the stated norm, in float64.
The constants the formulas drop are checked too: the seed's F* form is half the minimiser."""

import pytest
import torch

from steepest.directions import (
    fstar_direction,
    msgn,
    nuclear_direction,
    shampoo_direction,
    sign_direction,
    spectral_direction,
)
from steepest.directions.families import matrix_family

F64 = torch.float64
FAMILIES = ("gaussian", "tall", "wide", "rank_deficient", "vector", "conv")


def sv(X):
    return torch.linalg.svdvals(X)


NORMS = {
    "spectral": lambda X: sv(X)[0],
    "rms_to_rms": lambda X: (X.shape[1] / X.shape[0]) ** 0.5 * sv(X)[0],
    "nuclear": lambda X: sv(X).sum(),
    "squared_mean": lambda X: ((sv(X).sum() ** 2 + (X**2).sum()) / 2).sqrt(),
    "mean_of_norms": lambda X: (sv(X).sum() + X.norm()) / 2,
    "max_entry": lambda X: X.abs().max(),
}


def objective(G, D, norm):
    return (G * D).sum() + 0.5 * norm(D) ** 2


def assert_minimiser(G, D, norm, trials=40):
    gen = torch.Generator().manual_seed(0)
    f0 = objective(G, D, norm)
    scale = D.norm().clamp(min=1e-12)
    for t in range(trials):
        if t % 3 == 0:
            P = torch.randn(G.shape, generator=gen, dtype=F64)
        elif t % 3 == 1:
            P = torch.randn(G.shape[0], 1, generator=gen, dtype=F64) @ torch.randn(1, G.shape[1], generator=gen, dtype=F64)
        else:
            P = D * torch.randn((), generator=gen, dtype=F64)
        P = P / P.norm()
        for eps in (1e-1, 1e-3):
            f = objective(G, D + eps * scale * P, norm)
            assert f >= f0 - 1e-12 * abs(f0), (t, eps, (f - f0).item())


@pytest.mark.parametrize("family", FAMILIES)
def test_spectral(family):
    G = matrix_family(family)
    nuc = sv(G).sum()
    assert_minimiser(G, -nuc * msgn(G, method="svd"), NORMS["spectral"])
    m, n = G.shape
    D = spectral_direction(G, scale="rms_to_rms", method="svd")  # = √(m/n)·UVᵀ, the duality map
    assert_minimiser(G, -((m / n) ** 0.5) * nuc * D, NORMS["rms_to_rms"])


@pytest.mark.parametrize("family", FAMILIES)
def test_nuclear(family):
    G = matrix_family(family)
    assert_minimiser(G, -nuclear_direction(G), NORMS["nuclear"])


@pytest.mark.parametrize("family", FAMILIES)
def test_fstar_seed_is_half_the_squared_mean_minimiser(family):
    G = matrix_family(family)
    D = fstar_direction(G)
    assert_minimiser(G, -2 * D, NORMS["squared_mean"])
    assert objective(G, -2 * D, NORMS["squared_mean"]) < objective(G, -D, NORMS["squared_mean"])


@pytest.mark.parametrize("family", FAMILIES)
def test_fstar_mean_of_norms(family):
    G = matrix_family(family)
    D = fstar_direction(G, variant="mean_of_norms")
    assert_minimiser(G, -D, NORMS["mean_of_norms"])
    if family not in ("vector",):  # rank 1: both forms coincide up to scale
        seed = fstar_direction(G)
        best_scaled_seed = min(objective(G, -c * seed, NORMS["mean_of_norms"]) for c in torch.linspace(0.1, 4, 400, dtype=F64))
        assert objective(G, -D, NORMS["mean_of_norms"]) < best_scaled_seed  # differs in direction


@pytest.mark.parametrize("family", FAMILIES)
def test_sign(family):
    G = matrix_family(family)
    assert_minimiser(G, -G.abs().sum() * sign_direction(G), NORMS["max_entry"])


@pytest.mark.parametrize("family", FAMILIES)
def test_shampoo(family):
    """L^{-1/4} G R^{-1/4} minimises ⟨G, Δ⟩ + ½‖L^{1/8} Δ R^{1/8}‖_F² (ridge ε included in L, R)."""
    G = matrix_family(family)
    m, n = G.shape
    L = G @ G.T + 0.1 * torch.eye(m, dtype=F64)
    R = G.T @ G + 0.1 * torch.eye(n, dtype=F64)

    def power(A, p):
        lam, Q = torch.linalg.eigh(A)
        return (Q * lam**p) @ Q.T

    L8, R8 = power(L, 1 / 8), power(R, 1 / 8)
    norm = lambda X: (L8 @ X @ R8).norm()  # noqa: E731
    assert_minimiser(G, -shampoo_direction(G, L, R, eps=0.0), norm)

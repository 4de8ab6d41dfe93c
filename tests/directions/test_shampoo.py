"""Shampoo's direction and inverse roots against float64 eigh.

Tolerances: float64 1e-9; float32 1e-4 relative (eigh backward error eps32·λ_max, amplified by
the root's conditioning (λ_max/ε)^{1/4}); Distributed Shampoo tests its roots to 1e-6 in float64."""

import pytest
import torch

from steepest.directions import inverse_root, msgn, shampoo_direction
from steepest.directions.families import FAMILIES, matrix_family
from steepest.directions.reference import reference_msgn, reference_shampoo, relative_error


def stats(G, ridge=1e-3):
    m, n = G.shape[-2:]
    return G @ G.mT + ridge * torch.eye(m, dtype=G.dtype), G.mT @ G + ridge * torch.eye(n, dtype=G.dtype)


@pytest.mark.parametrize("family", FAMILIES)
def test_direction_matches_float64(family):
    G = matrix_family(family)
    L, R = stats(G)
    assert relative_error(shampoo_direction(G, L, R, eps=1e-4), reference_shampoo(G, L, R, 1e-4)) <= 1e-9
    G32, L32, R32 = G.float(), L.float(), R.float()
    D = shampoo_direction(G32, L32, R32, eps=1e-4)
    assert D.dtype == torch.float32
    assert relative_error(D, reference_shampoo(G32, L32, R32, 1e-4)) <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_without_accumulation_equals_msgn(family):
    """The lecture seed: (GGᵀ)^{-1/4} G (GᵀG)^{-1/4} = U_r V_rᵀ (pseudo-inverse roots, ε = 0)."""
    G = matrix_family(family)
    if family == "ill_conditioned":
        # σ down to 1e-6: GGᵀ has eigenvalues down to 1e-12 = κ² · eps64, so float64 eigh resolves
        # the smallest ones only to ~1e-4 relative; their fourth roots enter D damped (measured ~1e-6)
        tol = 1e-4
    else:
        tol = 1e-8
    D = shampoo_direction(G, G @ G.mT, G.mT @ G, eps=0.0)
    assert relative_error(D, reference_msgn(G)) <= tol
    assert relative_error(D, msgn(G, method="svd")) <= tol


def test_inverse_root_definition():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(30, 50, generator=gen, dtype=torch.float64)
    A = X @ X.T
    for p in (2, 4):
        root = inverse_root(A, p, eps=1e-3)
        Ae = A + 1e-3 * torch.eye(30, dtype=torch.float64)
        torch.testing.assert_close(torch.linalg.matrix_power(root, p) @ Ae, torch.eye(30, dtype=torch.float64), atol=1e-9, rtol=0)


def test_batched_and_broadcast():
    G = matrix_family("tall", batch=(2,))
    L, R = stats(G)
    D = shampoo_direction(G, L, R, eps=1e-4)
    for i in range(2):
        assert relative_error(D[i], reference_shampoo(G[i], L[i], R[i], 1e-4)) <= 1e-9
    # one R shared by the whole batch
    D = shampoo_direction(G, L, R[0], eps=1e-4)
    assert relative_error(D[1], reference_shampoo(G[1], L[1], R[0], 1e-4)) <= 1e-9

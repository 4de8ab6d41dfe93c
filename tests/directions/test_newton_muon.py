"""newton_muon_direction = msgn(G (ZZᵀ + δI)⁻¹) against float64 solve + SVD.

Tolerances: ``svd`` method float64 1e-8 (the solve's conditioning, κ(K) ≈ 10 here, times the polar
factor's); float32 1e-4."""

import pytest
import torch

from steepest.directions import msgn, newton_muon_direction, right_precondition
from steepest.directions.families import matrix_family
from steepest.directions.reference import reference_newton_muon, relative_error


def input_moment(n, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, 3 * n, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 2, n, dtype=torch.float64)[:, None]
    return (Z @ Z.T / Z.shape[1]).to(dtype)


@pytest.mark.parametrize("family", ["gaussian", "tall", "wide", "rank_deficient", "vector", "conv"])
def test_matches_float64(family):
    G = matrix_family(family)
    K = input_moment(G.shape[1])
    ref = reference_newton_muon(G, K, 0.05)
    assert relative_error(newton_muon_direction(G, K, damping=0.05, method="svd"), ref) <= 1e-8
    D = newton_muon_direction(G.float(), K.float(), damping=0.05, method="svd")
    assert D.dtype == torch.float32
    assert relative_error(D, reference_newton_muon(G.float(), K.float(), 0.05)) <= 1e-4


def test_identity_moment_is_muon():
    G = matrix_family("conv")
    K = torch.eye(G.shape[1], dtype=torch.float64)
    assert relative_error(newton_muon_direction(G, K, method="svd"), msgn(G, method="svd")) <= 1e-12


def test_polynomial_method_is_close():
    G = matrix_family("wide").float()
    K = input_moment(G.shape[1], dtype=torch.float32)
    D = newton_muon_direction(G, K, damping=0.05, steps=10, dtype=torch.float32)
    assert relative_error(D, reference_newton_muon(G, K, 0.05)) <= 1e-3


def test_failed_cholesky_falls_back_to_identity():
    """Like the paper's reference code: an indefinite K + δI leaves G unpreconditioned."""
    G = matrix_family("wide")
    K = -torch.eye(G.shape[1], dtype=torch.float64)
    torch.testing.assert_close(right_precondition(G, K, 0.0), G)


def test_right_precondition_batched_damping():
    G = matrix_family("tall", batch=(2,))
    K = torch.stack([input_moment(60, 0), input_moment(60, 1)])
    damping = torch.tensor([0.1, 0.3], dtype=torch.float64)
    X = right_precondition(G, K, damping)
    for i in range(2):
        expect = torch.linalg.solve(K[i] + damping[i] * torch.eye(60, dtype=torch.float64), G[i].T).T
        torch.testing.assert_close(X[i], expect, rtol=1e-10, atol=1e-12)

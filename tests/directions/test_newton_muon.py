"""newton_muon_direction = msgn(G (ZZᵀ + δI)⁻¹) against float64 solve + SVD.

Tolerances: ``svd`` method float64 1e-8 (the solve's conditioning, κ(K) ≈ 10 here, times the polar
factor's); float32 1e-4. Singular ``K`` (damping 0): the minimum ridge 1e-4·‖K‖_F caps the condition
at 1e4, so float32 solves within 2e-3 of float64 (κ·eps₃₂ ≈ 1e-3; measured 4.9e-4) and the
direction within 5e-3 (measured 1.1e-3)."""

import warnings

import pytest
import torch

from steepest.directions import msgn, newton_muon_direction, right_precondition
from steepest.directions.newton_muon import MIN_RIDGE, damped_inverse, effective_ridge, trace_ridge
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


def test_failed_cholesky_falls_back_to_identity_and_warns():
    """Like the paper's reference code: an indefinite K + δI leaves G unpreconditioned, and says so."""
    G = matrix_family("wide")
    K = -torch.eye(G.shape[1], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="not positive definite for 1 of 1 matrices"):
        torch.testing.assert_close(right_precondition(G, K, 0.0), G)
    with pytest.warns(RuntimeWarning, match="unpreconditioned"):
        D = newton_muon_direction(G.float(), K.float(), method="svd")
    assert relative_error(D, msgn(G, method="svd")) <= 1e-5


def test_right_precondition_batched_damping():
    G = matrix_family("tall", batch=(2,))
    K = torch.stack([input_moment(60, 0), input_moment(60, 1)])
    damping = torch.tensor([0.1, 0.3], dtype=torch.float64)
    X = right_precondition(G, K, damping)
    for i in range(2):
        expect = torch.linalg.solve(K[i] + damping[i] * torch.eye(60, dtype=torch.float64), G[i].T).T
        torch.testing.assert_close(X[i], expect, rtol=1e-10, atol=1e-12)


def singular_moment(n: int, rank: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``K = ZZᵀ/r`` from ``r < n`` tokens (rank ``r``, with 4 input channels 30× larger, as LLM
    activations have), and a ``(256, n)`` gradient ``H Zᵀ`` plus 1e-3 noise, in float64."""
    gen = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    Z[:4] *= 30
    G = torch.randn(256, rank, generator=gen, dtype=torch.float64) @ Z.T
    return Z @ Z.T / rank, G + 1e-3 * G.abs().mean() * torch.randn(G.shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("n,rank", [(512, 16), (768, 1)])
def test_singular_moment_without_damping_is_well_defined(n, rank):
    """Damping 0 on a singular ZZᵀ: before, the float32 Cholesky succeeded (entries ~5e7) or failed
    (silently msgn(G)) by rounding. Now the ridge is 1e-4·‖K‖_F: the factorisation succeeds (no
    warning) and float32 agrees with float64 at the same ridge."""
    K, G = singular_moment(n, rank)
    ridge = float(effective_ridge(K, 0.0))
    assert ridge == pytest.approx(MIN_RIDGE * float(torch.linalg.matrix_norm(K)))
    solve64 = torch.linalg.solve(K + ridge * torch.eye(n, dtype=torch.float64), G.mT).mT
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback would warn
        assert relative_error(right_precondition(G.float(), K.float(), 0.0), solve64) <= 2e-3
        D = newton_muon_direction(G.float(), K.float(), method="svd")
    assert relative_error(D, reference_newton_muon(G, K, ridge)) <= 5e-3
    if rank > 1:  # the preconditioning acts (rank 1: G's rows nearly all lie along z already)
        assert relative_error(msgn(G, method="svd"), reference_newton_muon(G, K, ridge)) > 0.02


def test_min_ridge_does_not_touch_a_larger_damping():
    G = matrix_family("tall")
    K = input_moment(G.shape[1])
    assert float(effective_ridge(K, 0.05)) == 0.05  # 1e-4·‖K‖_F ≈ 1e-3 < 0.05
    torch.testing.assert_close(right_precondition(G, K, 0.05), right_precondition(G, K, 0.05, min_ridge=0.0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
def test_every_scale_of_g_and_k_is_as_accurate_as_scale_one(compute):
    """msgn(cG·(tK)⁻¹) = msgn(G K⁻¹) with the relative ridge: G and K at 1e-30…1e30 (independently),
    float32 inputs, the error at scale 1 +5% as the bar (10 Polar Express steps in float32, 5 in bf16)."""
    K, G = singular_moment(512, 64, seed=1)
    ref = reference_newton_muon(G, K, float(effective_ridge(K, 0.0)))
    steps = 10 if compute == torch.float32 else 5

    def error(g_scale: float, k_scale: float) -> float:
        D = newton_muon_direction((G * g_scale).float(), (K * k_scale).float(), steps=steps, dtype=compute)
        assert D.dtype == torch.float32
        return relative_error(D, ref)

    bar = error(1.0, 1.0)
    for scale in (1e-30, 1e-10, 1e10, 1e30):
        assert error(scale, 1.0) <= 1.05 * bar + 1e-6, ("G", scale)
        assert error(1.0, scale) <= 1.05 * bar + 1e-6, ("K", scale)


def test_bfloat16_gradient():
    K, G = singular_moment(512, 64, seed=2)
    """A bf16 gradient is solved in float32; the reference takes the same bf16-rounded G (its rounding
    noise in K's null space is amplified up to 1e4× by the ridge: that is the input, not an error)."""
    Gb = G.bfloat16()
    D = newton_muon_direction(Gb, K.float(), method="svd")
    assert D.dtype == torch.bfloat16
    assert relative_error(D, reference_newton_muon(Gb.double(), K, float(effective_ridge(K, 0.0)))) <= 1e-2  # bf16 output: 2^-9


def test_damped_inverse_matches_float64():
    """NewtonMuon's cached K⁻¹: (K + δI)⁻¹ with δ = max(damping·tr(K)/n, 1e-4·‖K‖_F) + 1e-8, batched,
    against float64 inv; a singular K with damping 0 takes the min ridge, K = 0 the 1e-8 floor."""
    K_singular, _ = singular_moment(48, 8)
    K = torch.stack([input_moment(48, 0), K_singular, torch.zeros(48, 48, dtype=torch.float64)])
    eye = torch.eye(48, dtype=torch.float64)
    for damping in (0.2, 0.0):
        ridge = torch.stack([torch.maximum(damping * torch.trace(k) / 48, MIN_RIDGE * torch.linalg.matrix_norm(k)) + 1e-8 for k in K])
        torch.testing.assert_close(trace_ridge(K, damping), ridge, rtol=1e-14, atol=0)
        inverse = damped_inverse(K, damping)
        assert inverse.dtype == torch.float64 and inverse.shape == K.shape
        for k, r, inv in zip(K, ridge, inverse):
            torch.testing.assert_close(inv, torch.linalg.inv(k + r * eye), rtol=1e-9, atol=0)
    assert float(trace_ridge(K[2], 0.0)) == 1e-8  # K = 0, damping 0: still factorisable
    Kf = K[:2].float()  # float32, as the optimizer runs it
    for k, inv in zip(K[:2], damped_inverse(Kf, 0.2)):
        ref = torch.linalg.inv(k + trace_ridge(k, 0.2) * eye)
        assert relative_error(inv.double(), ref) <= 1e-6  # measured 1.1e-7


def test_damped_inverse_is_the_identity_where_cholesky_fails():
    K = torch.stack([-torch.eye(6, dtype=torch.float64), input_moment(6)])
    inverse = damped_inverse(K, 0.0)
    torch.testing.assert_close(inverse[0], torch.eye(6, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(inverse[1], torch.linalg.inv(K[1] + trace_ridge(K[1], 0.0) * torch.eye(6, dtype=torch.float64)))
    with pytest.raises(ValueError, match="K must be square"):
        damped_inverse(torch.zeros(3, 4), 0.2)
    with pytest.raises(ValueError, match="damping"):
        damped_inverse(K, -1.0)

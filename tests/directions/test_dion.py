"""Dion's pure functions (steepest.directions.dion) against float64 computations of the paper's formulas.

Sizes are realistic (a side >= 256, a GPT-2-small MLP matrix, a conv weight viewed as a matrix);
the rank is a quarter of the short side, Dion's default. Tolerances are stated per test: float32
arithmetic (unit roundoff 6e-8) through a QR and two products of inner dimension <= 3072 loses a
few digits, never more than 1e-4 relative on these well-scaled inputs.
"""

from __future__ import annotations

import pytest
import torch

from steepest.directions.dion import dion_rank, dion_update, error_feedback, initial_basis, next_basis, power_step

SHAPES = [(512, 256), (256, 512), (768, 3072), (256, 1152)]  # tall, wide, GPT-2 MLP, conv 256x128x3x3


def momentum_like(m: int, n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """128 directions of decaying size (σ_i ≈ (1+i)^-0.7) plus noise of size 1e-2, as momenta have."""
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n, 128)
    U = torch.randn(m, k, generator=gen) / m**0.5
    V = torch.randn(n, k, generator=gen) / n**0.5
    s = (1 + torch.arange(k, dtype=torch.float32)) ** -0.7
    return ((U * s) @ V.T + 1e-2 / (m * n) ** 0.25 * torch.randn(m, n, generator=gen)).to(dtype)


def reference_step(B: torch.Tensor, Q: torch.Tensor):
    """The paper's step in float64: P = orth(BQ), R = BᵀP, Q' = R / ‖R‖_col."""
    B, Q = B.double(), Q.double()
    P = torch.linalg.qr(B @ Q).Q
    R = B.T @ P
    return P, R, R / R.norm(dim=0, keepdim=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_power_step_matches_float64_and_P_is_orthonormal(shape):
    m, n = shape
    r = dion_rank(shape, 0.25)
    B = momentum_like(m, n, seed=m + n)
    Q0 = initial_basis(n, r)
    D, f = dion_update(B.float(), Q0)
    P64, R64, Q64 = reference_step(B.float(), Q0)
    eye = torch.eye(r, dtype=torch.float64)
    assert (f.P.double().T @ f.P.double() - eye).abs().max() < 1e-5  # orthonormal to float32 accuracy
    assert (f.Q.double().norm(dim=0) - 1).abs().max() < 1e-5  # unit columns
    D64 = P64 @ Q64.T
    assert (D.double() - D64).abs().max() / D64.abs().max() < 1e-4
    assert ((f.Q * f.norms).double() - R64).abs().max() / R64.abs().max() < 1e-4  # R = Q·diag(norms)


def test_float64_input_is_computed_in_float64():
    B = momentum_like(256, 128, seed=1)
    Q0 = initial_basis(128, 32, dtype=torch.float64)
    D, f = dion_update(B, Q0)
    P64, _, Q64 = reference_step(B, Q0)
    assert D.dtype == torch.float64
    assert (D - P64 @ Q64.T).abs().max() < 1e-12


def test_batched_equals_one_by_one():
    Bs = torch.stack([momentum_like(256, 128, seed=s, dtype=torch.float32) for s in range(3)])
    Q0 = initial_basis(128, 32).expand(3, 128, 32)
    D, _ = dion_update(Bs, Q0)
    for i in range(3):
        Di, _ = dion_update(Bs[i], Q0[i])
        assert (D[i] - Di).abs().max() <= 1e-6 * Di.abs().max()


@pytest.mark.parametrize("mu", [0.0, 0.95])
def test_error_feedback_keeps_exactly_what_was_not_captured(mu):
    """M' = B − (1−μ)·P Rᵀ: outside span(P) M' equals B; inside, μ·PᵀB remains (float64)."""
    B = momentum_like(512, 256, seed=3)
    f = power_step(B, initial_basis(256, 64, dtype=torch.float64))
    M = error_feedback(B, f.P, f.Q, f.norms, mu)
    outside = lambda X: X - f.P @ (f.P.T @ X)  # noqa: E731
    assert (outside(M) - outside(B)).abs().max() < 1e-12
    assert (f.P.T @ M - mu * (f.P.T @ B)).abs().max() < 1e-12


def test_error_feedback_rounds_once_into_the_momentum_dtype():
    B = momentum_like(256, 512, seed=4, dtype=torch.bfloat16)
    f = power_step(B, initial_basis(512, 64))
    M = error_feedback(B, f.P, f.Q, f.norms, 0.9)
    exact = B.double() - 0.1 * f.P.double() @ (f.Q * f.norms).double().T
    assert M.dtype == torch.bfloat16
    assert ((M.double() - exact).abs() <= 2**-8 * exact.abs() + 1e-30).all()  # within half a bf16 ulp


def test_zero_momentum_gives_zero_update_and_keeps_the_basis():
    Q0 = initial_basis(128, 16)
    D, f = dion_update(torch.zeros(256, 128), Q0)
    assert torch.equal(D, torch.zeros_like(D))
    assert torch.equal(next_basis(Q0, f), Q0)


def test_rank_deficient_momentum():
    """A rank-3 momentum with r = 16: P stays orthonormal, and the update's top-3 right space is B's."""
    gen = torch.Generator().manual_seed(5)
    B = torch.randn(256, 3, generator=gen) @ torch.randn(3, 128, generator=gen)
    D, f = dion_update(B, initial_basis(128, 16))
    assert (f.P.T @ f.P - torch.eye(16)).abs().max() < 1e-5
    assert torch.isfinite(D).all()
    # R's first 3 columns span B's row space: projecting them onto it changes nothing
    V = torch.linalg.svd(B.double(), full_matrices=False).Vh[:3].T
    R3 = (f.Q * f.norms)[:, :3].double()
    assert (R3 - V @ (V.T @ R3)).abs().max() < 1e-4 * R3.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-20, 1.0, 1e20])
def test_rank_deficient_momentum_adds_no_noise_directions(dtype, scale):
    """A rank-4 momentum with r = 32: the columns of P beyond B's range carry rounding noise only;
    they must not become unit directions. The update is P Q'ᵀ over the 4 captured columns: rank 4
    and ‖D‖_F = 2 (orthonormal P, unit columns of Q'), at any scale (it was rank 32, ‖D‖_F = √32)."""
    gen = torch.Generator().manual_seed(6)
    B = (torch.randn(256, 4, generator=gen, dtype=torch.float64) @ torch.randn(4, 128, generator=gen, dtype=torch.float64) * scale).to(dtype)
    D, f = dion_update(B, initial_basis(128, 32, dtype=dtype))
    assert int((f.norms > 0).sum()) == 4
    S = torch.linalg.svdvals(D.double())
    assert abs(float(torch.linalg.norm(D.double())) - 2.0) < 1e-5
    assert float(S[4]) <= 1e-6 * float(S[0])


def test_rank_and_initial_basis():
    assert dion_rank((512, 256), 0.25) == 64
    assert dion_rank((3, 1000), 0.25) == 1
    assert dion_rank((768, 3072), 1.0) == 768
    Q = initial_basis(300, 20)
    assert Q.dtype == torch.float32 and torch.allclose(Q.norm(dim=0), torch.ones(20))
    assert torch.equal(Q, initial_basis(300, 20))  # deterministic, independent of the global RNG
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="rank_fraction"):
            dion_rank((8, 8), bad)

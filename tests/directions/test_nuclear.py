"""nuclear_direction = σ₁u₁v₁ᵀ against a float64 SVD.

Tolerances: float64 ``svd`` 1e-9 (u₁v₁ᵀ's sensitivity is eps/(σ₁−σ₂)); float32 ``svd`` 1e-4;
``power`` with its default residual tol 1e-5 → error ≤ residual/gap, 1e-3 on these families
(measured ≤ 1.6e-4)."""

import pytest
import torch

from steepest.directions import nuclear_direction
from steepest.directions.families import FAMILIES, matrix_family
from steepest.directions.reference import reference_nuclear, relative_error


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sigma", ["keep", "drop"])
def test_svd_method(family, sigma):
    G = matrix_family(family)
    assert relative_error(nuclear_direction(G, sigma=sigma), reference_nuclear(G, sigma)) <= 1e-9
    G32 = G.float()
    D = nuclear_direction(G32, sigma=sigma)
    assert D.dtype == torch.float32 and D.shape == G.shape
    assert relative_error(D, reference_nuclear(G32, sigma)) <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_power_method(family):
    G = matrix_family(family).float()
    assert relative_error(nuclear_direction(G, method="power"), reference_nuclear(G)) <= 1e-3


def test_bfloat16_input():
    G = matrix_family("conv").bfloat16()
    D = nuclear_direction(G)
    assert D.dtype == torch.bfloat16
    assert relative_error(D, reference_nuclear(G)) <= 1e-2


def test_rank_one_and_scale():
    G = matrix_family("gaussian")
    D = nuclear_direction(G)
    s = torch.linalg.svdvals(D)
    assert s[1:].max() <= 1e-10 * s[0]
    torch.testing.assert_close(s[0], torch.linalg.svdvals(G)[0])
    assert torch.linalg.svdvals(nuclear_direction(G, sigma="drop"))[0].item() == pytest.approx(1.0, abs=1e-12)


def test_warm_start_from_previous_v():
    """After a small change of G, one iteration from the previous v₁ is as good as a converged
    cold start (the gap σ₂/σ₁ = 0.8 makes a cold start with one iteration poor)."""
    from steepest.directions import top_singular
    from steepest.directions.families import matrix_with_spectrum

    gen = torch.Generator().manual_seed(0)
    S = torch.cat([torch.tensor([1.0, 0.8]), torch.linspace(0.7, 0.01, 58)]).double()
    G = matrix_with_spectrum(300, 60, S, gen).float()
    _, _, V = top_singular(G, 1, tol=1e-6)
    G2 = G + 1e-4 * torch.randn(G.shape, generator=gen)
    warm = nuclear_direction(G2, method="power", init=V, iters=1, tol=None)
    cold = nuclear_direction(G2, method="power", iters=1, tol=None)
    assert relative_error(warm, reference_nuclear(G2)) <= 1e-3
    assert relative_error(cold, reference_nuclear(G2)) > 1e-2


def test_batched():
    G = matrix_family("wide", batch=(3,))
    D = nuclear_direction(G)
    for i in range(3):
        assert relative_error(D[i], reference_nuclear(G[i])) <= 1e-9


@pytest.mark.parametrize("scale", [1e-30, 1e-22, 1e-10, 1e10, 1e20, 1e30])
@pytest.mark.parametrize("method", ["power", "svd"])
def test_scale_equivariant_from_1e_minus_30_to_1e30(scale, method):
    """A 256×128 Gaussian matrix times 1e-30 … 1e30 in float32: the error against float64 stays
    that at scale 1 (bar: 2× it plus 1e-6). The power method's residual test used to underflow
    (error 0.38 at 1e-22, 1.07 at 1e-30)."""
    G = torch.randn(256, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bar = relative_error(nuclear_direction(G.float(), method=method), reference_nuclear(G))
    X = (G * scale).float()
    err = relative_error(nuclear_direction(X, method=method), reference_nuclear(X.double()))
    assert err <= 2 * bar + 1e-6, (err, bar)

"""F* thresholds and directions.

The thresholds are checked on the reference's worked examples (exact to 1e-5, the digits given)
and on their defining equations (1e-12 in float64); directions against a float64 SVD with
bisection thresholds (float64 1e-9; float32 1e-4; low-rank 1e-4)."""

import pytest
import torch

from steepest.directions import fstar_direction, fstar_threshold, mean_of_norms_threshold
from steepest.directions.families import FAMILIES, matrix_family, matrix_with_spectrum
from steepest.directions.reference import reference_fstar, relative_error

F64 = torch.float64


def test_seed_threshold_worked_example():
    S = torch.tensor([3, 2.9, 2, 0.5, 0.1], dtype=F64)
    tau, r = fstar_threshold(S, with_rank=True)
    assert tau.item() == pytest.approx(1.975, abs=1e-12) and r.item() == 3
    torch.testing.assert_close((S - tau).clamp(min=0), torch.tensor([1.025, 0.925, 0.025, 0, 0], dtype=F64))


def test_mean_of_norms_worked_examples():
    S = torch.tensor([3, 2.9, 2, 0.5, 0.1], dtype=F64)
    c, k, r = mean_of_norms_threshold(S)
    assert c.item() == pytest.approx(1.73697, abs=1e-5) and r.item() == 3
    torch.testing.assert_close(k * (S - c).clamp(min=0), torch.tensor([1.98266, 1.82569, 0.41290, 0, 0], dtype=F64), atol=1e-5, rtol=0)
    S = torch.tensor([5, 4, 3, 2, 1], dtype=F64)
    assert fstar_threshold(S).item() == pytest.approx(3.0)
    assert fstar_threshold(S, with_rank=True)[1].item() == 2
    c, _, r = mean_of_norms_threshold(S)
    assert c.item() == pytest.approx(2.683, abs=1e-3) and r.item() == 3


def test_thresholds_solve_their_equations_in_any_order():
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-6, 1.0, 1e6):
        S = torch.rand(50, 17, generator=gen, dtype=F64) ** 3 * scale
        S = S[:, torch.randperm(17, generator=gen)]
        tau = fstar_threshold(S)
        torch.testing.assert_close((S - tau[:, None]).clamp(min=0).sum(-1), tau, rtol=1e-12, atol=0)
        c, k, r = mean_of_norms_threshold(S)
        torch.testing.assert_close(torch.linalg.vector_norm((S - c[:, None]).clamp(min=0), dim=-1), c, rtol=1e-12, atol=0)
        assert (tau >= S.max(-1).values / 2 - 1e-12 * scale).all()
        assert (c >= S.max(-1).values / 2 - 1e-12 * scale).all()


def test_thresholds_of_zero():
    assert fstar_threshold(torch.zeros(4)).item() == 0
    c, k, r = mean_of_norms_threshold(torch.zeros(4))
    assert c.item() == 0 and k.item() == 0 and r.item() == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", ["seed", "mean_of_norms"])
def test_direction_svd(family, variant):
    G = matrix_family(family)
    ref = reference_fstar(G, variant)
    assert relative_error(fstar_direction(G, variant=variant), ref) <= 1e-9
    D = fstar_direction(G.float(), variant=variant)
    assert D.dtype == torch.float32 and D.shape == G.shape
    assert relative_error(D, reference_fstar(G.float(), variant)) <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", ["seed", "mean_of_norms"])
def test_direction_lowrank(family, variant):
    G = matrix_family(family).float()
    D = fstar_direction(G, variant=variant, method="lowrank", rank=1)  # the block must grow
    assert relative_error(D, reference_fstar(G, variant)) <= 1e-4


def test_direction_rank_and_variants_differ():
    G = matrix_family("ill_conditioned")
    D = fstar_direction(G)
    _, r = fstar_threshold(torch.linalg.svdvals(G), with_rank=True)
    assert torch.linalg.matrix_rank(D).item() == r.item()
    assert relative_error(fstar_direction(G, variant="mean_of_norms"), D) > 1e-3


def test_sigma_drop_normalises_spectral_norm():
    G = matrix_family("conv")
    D = fstar_direction(G, sigma="drop")
    assert torch.linalg.svdvals(D)[0].item() == pytest.approx(1.0, abs=1e-12)
    assert relative_error(D / torch.linalg.norm(D), fstar_direction(G) / torch.linalg.norm(fstar_direction(G))) <= 1e-12


def test_batched():
    G = matrix_family("gaussian", batch=(2, 2))
    D = fstar_direction(G)
    assert relative_error(D[1, 0], reference_fstar(G[1, 0])) <= 1e-9


@pytest.mark.parametrize("scale", [1e-30, 1e-22, 1e-10, 1e10, 1e20, 1e30])
@pytest.mark.parametrize("method", ["lowrank", "svd"])
@pytest.mark.parametrize("variant", ["seed", "mean_of_norms"])
def test_scale_equivariant_from_1e_minus_30_to_1e30(scale, method, variant):
    """A 256×128 matrix of F* rank 12 times 1e-30 … 1e30 in float32: the error against float64
    stays that at scale 1 (bar: 2× it plus 1e-6)."""
    G = _spectrum_matrix(12, 256, 128, seed=1)
    bar = relative_error(fstar_direction(G.float(), method=method, variant=variant), reference_fstar(G, variant))
    X = (G * scale).float()
    err = relative_error(fstar_direction(X, method=method, variant=variant), reference_fstar(X.double(), variant))
    assert err <= 2 * bar + 1e-6, (err, bar)


def _spectrum_matrix(rank: int, m: int, n: int, seed: int) -> torch.Tensor:
    """F* (seed) rank exactly ``rank``: ``rank`` values in [1, 1.02], a tail of at most 0.2."""
    i = torch.arange(n, dtype=F64)
    S = torch.cat([1 + 0.02 * (rank - 1 - i[:rank]) / rank, 0.2 * torch.exp(-(i[rank:] - rank) / 30)])
    return matrix_with_spectrum(m, n, S, torch.Generator().manual_seed(seed))


def test_adaptive_grows_each_matrix_to_its_rank_and_is_batch_independent():
    """fstar_adaptive from a 16-column block on 256×128 matrices of ranks 1, 40, 12, 60: each
    update matches float64 (1e-3; measured ~1e-5), the ranks are exact, rank 60 (a block past
    ``max_width`` = 64) takes the dense SVD, and each matrix's result equals its result alone."""
    from steepest.directions.fstar import fstar_adaptive
    from steepest.directions.lowrank import random_block

    ranks = [1, 40, 12, 60]
    G = torch.stack([_spectrum_matrix(r, 256, 128, seed) for seed, r in enumerate(ranks)])
    init = random_block(torch.Size([4]), 128, 16, dtype=torch.float32, device=G.device)
    kw = dict(iters=4, grow_iters=4, oversample=8, max_width=64)
    D, V, r, _ = fstar_adaptive(G.float(), init, **kw)
    assert r.tolist() == ranks and V.shape == (4, 128, 16)
    for i in range(4):
        assert relative_error(D[i], reference_fstar(G[i])) <= 1e-3
        Di, Vi, ri, _ = fstar_adaptive(G[i : i + 1].float(), init[i : i + 1], **kw)
        torch.testing.assert_close(Di[0], D[i], rtol=0, atol=1e-6 * D[i].abs().max().item())

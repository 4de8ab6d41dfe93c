"""Shampoo's direction, inverse roots and blocked form against float64 eigh.

Tolerances: float64 1e-9. float32 roots: the float32 eigh's root is off by about 2e-8·κ (relative
Frobenius, κ = (λ_max+ε)/(λ_min+ε), measured 1.3e-4 at κ = 1e4, d = 128; 2.7e-4 at d = 512) and is
used only up to κ = 1e4, beyond which the root is redone in float64 (then the float32 rounding of
the input and output, ~1e-7, remains): the bar is 1e-6 + 4e-8·min(κ, 1e4). float32 directions: the
float32 products ``L^{-1/4} G R^{-1/4}`` add eps32·(κ_L κ_R)^{1/4} (the roots' own conditions
amplify the rounding of ``G``; the bar is 1e-5 + 8·eps32·(κ_L κ_R)^{1/4}); Distributed Shampoo tests its roots to 1e-6 in float64."""

import pytest
import torch

from steepest.directions import inverse_root, msgn, shampoo_direction
from steepest.directions import shampoo as shampoo_module
from steepest.directions.shampoo import block_inverse_root, block_partition, block_preconditioned, block_statistics
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
    # measured 0.3-4.0 × eps32·(κ_L κ_R)^{1/4} over the families (4.0: ill_conditioned, κ_L ≈ 1e7)
    tol = 1e-5 + 8 * torch.finfo(torch.float32).eps * (condition(L32, 1e-4) * condition(R32, 1e-4)) ** 0.25
    assert relative_error(D, reference_shampoo(G32, L32, R32, 1e-4)) <= tol


def condition(A, eps):
    lam = torch.linalg.eigvalsh(A.double()).clamp(min=0) + eps
    return (lam[-1] / lam[0]).item()


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


# --- roots at real sizes and conditions ------------------------------------------------------------


def root64(A, p, eps):
    """float64 ``(A + εI)^{-1/p}`` without cutoff (ε > 0), pseudo-inverse at d·eps64·λ_max (ε = 0)."""
    lam, Q = torch.linalg.eigh(A.double())
    lam = lam.clamp(min=0) + eps
    inv = lam.clamp(min=1e-300) ** (-1.0 / p)
    if eps == 0:
        inv = torch.where(lam > A.shape[-1] * 2.3e-16 * lam[-1], inv, torch.zeros_like(inv))
    return (Q * inv) @ Q.T


def with_condition(d, kappa, seed=0, scale=1.0):
    """A float32 SPD ``d×d`` matrix with eigenvalues log-spaced from ``scale`` down to ``scale/κ``."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    lam = scale * torch.logspace(0, -torch.log10(torch.tensor(kappa)).item(), d, dtype=torch.float64)
    return ((Q * lam) @ Q.T).float()


SIZES_AND_CONDITIONS = [(d, k) for d in (128, 512) for k in (1e3, 9e3, 1e5, 1e6, 1e7)] + [(1024, 9e3), (1024, 1e6)]


@pytest.mark.parametrize("d, kappa", SIZES_AND_CONDITIONS)
@pytest.mark.parametrize("relative_eps", [0.0, 1e-9])
def test_float32_root_against_float64(d, kappa, relative_eps):
    """Issue 13 #5: the old cutoff zeroed eigenvalues below d·eps32·λ_max even for ε > 0 and the
    float64 redo started at κ = 1e6: error 0.2-0.44 at κ = 1e5-9e5. At d = 1024, κ = 9e3 (below the
    float32 limit) the float32 pseudo-inverse cutoff (1.2e-4·λ_max) would zero the smallest
    eigenvalues (error 0.22): with ε = 0 such matrices go to float64 too."""
    A = with_condition(d, kappa, seed=d, scale=1e-3)  # small entries: the bar is relative
    eps = relative_eps * 1e-3
    ref = root64(A, 4, eps)  # of the float32-rounded matrix: only the root's error is measured
    kappa_eff = kappa if relative_eps == 0 else 1 / (1 / kappa + relative_eps)  # of A + εI
    tol = 1e-6 + 4e-8 * min(kappa_eff, 1e4)
    for root in (inverse_root(A, 4, eps=eps), block_inverse_root(A[None], d, 4, eps)[0]):
        assert root.dtype == torch.float32
        assert relative_error(root, ref) <= tol


def test_root_of_a_blocked_conv_statistic_in_float32():
    """A ResNet-18 3×3 conv of 512 channels (512×4608) with a rank-32 gradient: ``R``'s blocks at the
    default cap (five of 922, the last 920 wide) have hundreds of zero eigenvalues; with ε = 1e-12
    their roots must match float64's (the float32 eigh cannot resolve them: the float64 redo must)."""
    gen = torch.Generator().manual_seed(3)
    G = (torch.randn(512, 32, generator=gen) @ torch.randn(32, 4608, generator=gen)) / 32
    rows, cols = block_partition(512, 1024), block_partition(4608, 1024)
    assert rows == (1, 512) and cols == (5, 922)
    L, R = block_statistics(G, rows, cols)
    eps = 1e-6 * L.diagonal(dim1=-2, dim2=-1).mean().item()
    roots = block_inverse_root(R, 4608, 4, eps)
    for j, width in ((0, 922), (4, 920)):  # a full block and the short last one
        ref = root64(R[j, :width, :width], 4, eps)
        assert relative_error(roots[j, :width, :width], ref) <= 1e-6
        assert not roots[j, width:].any() and not roots[j, :, width:].any()


def test_eigh_that_does_not_converge_falls_back(monkeypatch):
    """float32 eigh failing (as MKL's did on a ResNet-18 ``R``) → float64; float64 failing → a jittered
    retry; all failing → one clear error."""
    A = with_condition(128, 1e3)
    ref = root64(A, 4, 0.0)
    real = torch.linalg.eigh
    calls = []

    def flaky(X, *args, **kwargs):
        calls.append(X.dtype)
        if X.dtype == torch.float32 or calls.count(torch.float64) == 1:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real(X, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    root = inverse_root(A, 4)
    assert calls == [torch.float32, torch.float64, torch.float64]
    assert root.dtype == torch.float32
    assert relative_error(root, ref) <= 1e-6  # jitter 1e-10 of λ_max, times κ = 1e3

    def broken(X, *args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", broken)
    with pytest.raises(torch.linalg.LinAlgError, match="raise eps or lower max_preconditioner_dim"):
        inverse_root(A, 4)
    assert shampoo_module.JITTERS  # the retries exist


def test_eps_zero_is_pseudo_inverse_and_eps_positive_has_no_cutoff():
    """ε = 0: eigenvalues at round-off level map to 0 (not ∞); ε > 0: (λ + ε)^{-1/4} for every λ,
    however small relative to λ_max."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(256, 64, generator=gen, dtype=torch.float64)
    A = (X @ X.T).float()  # rank 64 of 256
    P = inverse_root(A, 4)
    ref = root64(A, 4, 0.0)
    assert torch.isfinite(P).all() and relative_error(P, ref) <= 1e-5
    eps = 1e-9 * torch.linalg.eigvalsh(A.double())[-1].item()
    Q = inverse_root(A, 4, eps=eps)
    assert relative_error(Q, root64(A, 4, eps)) <= 1e-5  # the old cutoff zeroed 192 eigenvalues of 1e-9 λ_max


# --- blocked Shampoo -----------------------------------------------------------------------------


@pytest.mark.parametrize("d, cap", [(1, 1024), (1024, 1024), (1025, 1024), (4608, 1024), (12480, 1024), (7, 2), (130, 64), (1000, 128)])
def test_block_partition(d, cap):
    count, size = block_partition(d, cap)
    assert size <= cap and (count - 1) * size < d <= count * size
    assert size - (d - (count - 1) * size) < count  # nearly equal: the last block is short by < count
    assert count == -(-d // cap)  # no more blocks than the cap needs
    assert block_partition(d, None) == (1, d)


def blocked_reference(G, rows, cols, eps):
    """D_ij = L_i^{-1/4} G_ij R_j^{-1/4} with L_i = G_i: G_i:ᵀ, R_j = G_:jᵀ G_:j, in float64 loops."""
    G = G.double()
    m, n = G.shape
    rs = [slice(i * rows[1], min(m, (i + 1) * rows[1])) for i in range(rows[0])]
    cs = [slice(j * cols[1], min(n, (j + 1) * cols[1])) for j in range(cols[0])]
    D = torch.zeros_like(G)
    for r in rs:
        Lr = root64(G[r] @ G[r].T, 4, eps)
        for c in cs:
            D[r, c] = Lr @ G[r, c] @ root64(G[:, c].T @ G[:, c], 4, eps)
    return D


@pytest.mark.parametrize("shape, cap", [((130, 1000), 64), ((300, 1000), 128), ((1, 12480), 256), ((96, 80), 128)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_blocked_direction_against_float64(shape, cap, dtype):
    m, n = shape
    gen = torch.Generator().manual_seed(m)
    G = torch.randn(m, n, generator=gen, dtype=dtype)
    rows, cols = block_partition(m, cap), block_partition(n, cap)
    eps = 0.1
    L, R = block_statistics(G, rows, cols)
    assert L.shape == (rows[0], rows[1], rows[1]) and R.shape == (cols[0], cols[1], cols[1])
    D = block_preconditioned(block_inverse_root(L, m, 4, eps), G, block_inverse_root(R, n, 4, eps))
    assert D.shape == G.shape and D.dtype == dtype
    ref = blocked_reference(G, rows, cols, eps)
    assert relative_error(D, ref) <= (1e-10 if dtype == torch.float64 else 1e-5)
    if rows[0] == cols[0] == 1:  # one block each way is plain Shampoo
        full = shampoo_direction(G, G @ G.mT, G.mT @ G, eps=eps)
        assert relative_error(D, full) <= (1e-10 if dtype == torch.float64 else 1e-5)


def test_blocked_batch_is_per_matrix():
    """A batch of matrices: each one's blocks and roots are its own."""
    gen = torch.Generator().manual_seed(5)
    G = torch.randn(3, 130, 200, generator=gen, dtype=torch.float64)
    rows, cols = block_partition(130, 64), block_partition(200, 64)
    L, R = block_statistics(G, rows, cols)
    D = block_preconditioned(block_inverse_root(L, 130, 4, 0.1), G, block_inverse_root(R, 200, 4, 0.1))
    for i in range(3):
        assert relative_error(D[i], blocked_reference(G[i], rows, cols, 0.1)) <= 1e-10

"""The per-role dual maps of :mod:`steepest.directions.modular`, in float64: each reaches the dual
norm of the norm its docstring states (``⟨G, D⟩ = ‖G‖†`` and ``‖D‖ = 1``), no unit-norm matrix
does better, zero gradients (and zero rows) give zeros, and the result does not depend on the
gradient's scale from 1e-30 to 1e30.

Norms and dual norms are computed here from their definitions, independently of the library.
Tolerances come from the precision: a sum of ``N`` positive float64 terms is within ``N·eps``
(relative) of exact, and a float64 SVD's singular values within ``max(m, n)·eps·σ₁`` (backward
stability), so the spectral bars are ``max(m, n)·eps`` relative to ``‖G‖_*``'s largest term times
the rank, taken generously as ``16·max(m, n)·min(m, n)·eps``.
"""

from __future__ import annotations

import math

import pytest
import torch

from steepest.directions import msgn
from steepest.directions.families import matrix_family
from steepest.directions.modular import ATOMS, l1_to_rms, rms_to_linf, rms_to_rms, rms_vector, sign_head

F64 = torch.float64
EPS = torch.finfo(F64).eps
FAMILIES = ("gaussian", "ill_conditioned", "tall", "wide", "rank_deficient", "vector", "conv")


def svals(X):
    return torch.linalg.svdvals(X)


def rows(X):
    return X.norm(dim=-1)


# atom -> (norm of D, dual norm of G), from the definitions in the module docstring (m = fan-out, n = fan-in)
NORMS = {
    "spectral": (lambda D: math.sqrt(D.shape[1] / D.shape[0]) * svals(D)[0], lambda G: math.sqrt(G.shape[0] / G.shape[1]) * svals(G).sum()),
    "embed": (lambda D: rows(D).max() / math.sqrt(D.shape[1]), lambda G: math.sqrt(G.shape[1]) * rows(G).sum()),
    "sign": (lambda D: D.shape[1] * D.abs().max(), lambda G: G.abs().sum() / G.shape[1]),
    "rownorm": (lambda D: math.sqrt(D.shape[1]) * rows(D).max(), lambda G: rows(G).sum() / math.sqrt(G.shape[1])),
    "rms": (lambda D: D.norm() / math.sqrt(D.numel()), lambda G: math.sqrt(G.numel()) * G.norm()),
}


def dualize(atom: str, G: torch.Tensor) -> torch.Tensor:
    if atom == "spectral":
        return rms_to_rms(G, method="svd")
    return ATOMS[atom](G)


def tolerance(atom: str, G: torch.Tensor) -> float:
    if atom == "spectral":
        return 16 * max(G.shape) * min(G.shape) * EPS
    return G.numel() * EPS


def unit_ball_sample(atom: str, shape, gen) -> torch.Tensor:
    """A random matrix of norm 1 in ``atom``'s norm (a competitor for the maximiser)."""
    T = torch.randn(shape, generator=gen, dtype=F64)
    return T / NORMS[atom][0](T)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("atom", list(ATOMS))
def test_each_atom_reaches_its_dual_norm(atom, family):
    G = matrix_family(family)
    D = dualize(atom, G)
    norm, dual = NORMS[atom]
    tol = tolerance(atom, G)
    assert D.shape == G.shape and D.dtype == F64
    assert abs(float((G * D).sum()) - float(dual(G))) <= tol * float(dual(G))
    assert abs(float(norm(D)) - 1.0) <= tol
    gen = torch.Generator().manual_seed(1)
    best = float((G * D).sum())
    for _ in range(20):  # no matrix on the unit sphere does better
        assert float((G * unit_ball_sample(atom, G.shape, gen)).sum()) <= best * (1 + tol)


@pytest.mark.parametrize("atom", list(ATOMS))
def test_zero_gradient_gives_zero(atom):
    for shape in ((32, 48), (1, 7), (3, 64, 5)):
        G = torch.zeros(shape, dtype=F64)
        D = dualize(atom, G) if atom != "spectral" or len(shape) == 2 else rms_to_rms(G, method="svd")
        assert torch.equal(D, torch.zeros_like(G)), (atom, shape)
    for dtype in (torch.float32, torch.bfloat16):
        D = ATOMS[atom](torch.zeros(16, 8, dtype=dtype))
        assert D.dtype == dtype and not D.isnan().any() and not D.any()


def test_rows_without_gradient_stay_zero():
    """Embedding rows of tokens not in the batch: zero in, zero out; the other rows at RMS 1."""
    G = torch.randn(10, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    G[[1, 4, 7]] = 0
    for fn, row_norm in ((l1_to_rms, math.sqrt(6)), (rms_to_linf, 1 / math.sqrt(6))):
        D = fn(G)
        assert torch.equal(D[[1, 4, 7]], torch.zeros(3, 6, dtype=F64))
        kept = [0, 2, 3, 5, 6, 8, 9]
        torch.testing.assert_close(rows(D[kept]), torch.full((7,), row_norm, dtype=F64), rtol=6 * EPS * 8, atol=0)


@pytest.mark.parametrize("atom", ["embed", "sign", "rownorm", "rms"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_scale_invariant_from_1e_minus_30_to_1e30(atom, dtype):
    """``D(cG) = D(G)`` to the rounding of ``cG`` itself (one float32/float64 rounding per entry,
    then a sum of ``n`` terms): relative ``(n + 2)·eps`` per row."""
    G = matrix_family("conv").to(dtype)
    ref = ATOMS[atom](G)
    eps = torch.finfo(dtype).eps
    for scale in (1e-30, 1e-20, 1e-10, 1e10, 1e20, 1e30):
        D = ATOMS[atom](G * scale)
        assert torch.isfinite(D).all(), scale
        bound = (G.shape[1] + 2) * eps * ref.abs().max()
        assert (D - ref).abs().max() <= bound, (scale, float((D - ref).abs().max()))


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_spectral_scale_invariant(scale):
    G = matrix_family("tall").float()
    torch.testing.assert_close(rms_to_rms(G * scale, method="svd"), rms_to_rms(G, method="svd"), rtol=1e-4, atol=1e-5)


def test_spectral_reuses_msgn_with_the_rms_to_rms_factor():
    """Conv-shaped (64, 64·3·3): ``√(m/n)`` on the (out, in·k²) view, no extra ``1/k²``."""
    G = matrix_family("conv")
    for method in ("svd", "polar_express"):
        torch.testing.assert_close(rms_to_rms(G, method=method, dtype=F64), msgn(G, method=method, dtype=F64) * math.sqrt(64 / 576))


def test_batched_and_vector_shapes():
    gen = torch.Generator().manual_seed(3)
    G = torch.randn(4, 9, 5, generator=gen, dtype=F64)
    for atom in ("embed", "sign", "rownorm"):
        torch.testing.assert_close(ATOMS[atom](G), torch.stack([ATOMS[atom](g) for g in G]), rtol=0, atol=0)
    g = torch.randn(13, generator=gen, dtype=F64)
    torch.testing.assert_close(rms_vector(g), g / g.square().mean().sqrt(), rtol=16 * EPS, atol=0)
    assert torch.equal(sign_head(g), torch.sign(g))  # a bias's fan-in is 1
    assert torch.equal(rms_vector(torch.tensor(-3.0, dtype=F64)), torch.tensor(-1.0, dtype=F64))
    torch.testing.assert_close(l1_to_rms(g.view(1, -1)).view(-1), rms_vector(g), rtol=0, atol=0)  # a bias is a one-row embedding


def test_tied_weight_roles_share_a_direction():
    """On a (vocab, d) matrix the head's RMS→ℓ∞ map is the embedding's ℓ1→RMS map divided by d."""
    G = torch.randn(50, 8, generator=torch.Generator().manual_seed(4), dtype=F64)
    torch.testing.assert_close(rms_to_linf(G) * 8, l1_to_rms(G), rtol=8 * EPS, atol=0)


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match="NaN or Inf"):
        l1_to_rms(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="at least 2 dims"):
        rms_to_linf(torch.ones(3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        rms_vector([1.0, 2.0])

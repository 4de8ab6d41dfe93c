"""Bad input gives a ValueError that names the argument and what is accepted."""

import pytest
import torch

from steepest.directions import (
    fstar_direction,
    fstar_threshold,
    inverse_root,
    msgn,
    newton_muon_direction,
    nuclear_direction,
    shampoo_direction,
    sign_direction,
    spectral_direction,
    top_singular,
)

G = torch.randn(6, 9)
MATRIX_FUNCTIONS = [
    msgn,
    spectral_direction,
    nuclear_direction,
    fstar_direction,
    lambda X, **k: shampoo_direction(X, torch.eye(X.shape[0] if X.ndim > 1 else 1), torch.eye(X.shape[-1]), **k),
    lambda X, **k: newton_muon_direction(X, torch.eye(X.shape[-1]), **k),
    lambda X, **k: top_singular(X, 1, **k),
]


@pytest.mark.parametrize("fn", MATRIX_FUNCTIONS)
def test_vector_is_rejected(fn):
    with pytest.raises(ValueError, match=r"G must have shape \(\.\.\., m, n\)"):
        fn(torch.randn(5))


@pytest.mark.parametrize("fn", MATRIX_FUNCTIONS + [sign_direction])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_is_rejected(fn, bad):
    X = G.clone()
    X[2, 3] = bad
    with pytest.raises(ValueError, match="G contains NaN or Inf"):
        fn(X)


@pytest.mark.parametrize("fn", MATRIX_FUNCTIONS + [sign_direction])
def test_integer_and_complex_are_rejected(fn):
    with pytest.raises(ValueError, match="real floating-point"):
        fn(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="real floating-point"):
        fn(torch.ones(3, 4, dtype=torch.complex64))


@pytest.mark.parametrize("fn", MATRIX_FUNCTIONS + [sign_direction])
def test_zero_gives_zero_not_nan(fn):
    out = fn(torch.zeros(4, 7))
    tensors = out if isinstance(out, tuple) else (out,)
    assert all(torch.isfinite(t).all() for t in tensors)
    if not isinstance(out, tuple):
        assert torch.equal(out, torch.zeros(4, 7))


def test_unknown_names():
    with pytest.raises(ValueError, match=r"unknown method 'qr'; accepted values: 'polar_express', 'newton_schulz', 'svd'"):
        msgn(G, method="qr")
    with pytest.raises(ValueError, match="unknown scale 'rms'"):
        spectral_direction(G, scale="rms")
    with pytest.raises(ValueError, match="unknown variant 'mean'"):
        fstar_direction(G, variant="mean")
    with pytest.raises(ValueError, match="unknown sigma 'kept'"):
        nuclear_direction(G, sigma="kept")
    with pytest.raises(ValueError, match="unknown method 'lanczos'"):
        nuclear_direction(G, method="lanczos")


def test_negative_damping_and_eps():
    with pytest.raises(ValueError, match="damping must be a finite number >= 0"):
        newton_muon_direction(G, torch.eye(9), damping=-1.0)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        shampoo_direction(G, torch.eye(6), torch.eye(9), eps=-1e-3)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        inverse_root(torch.eye(3), 4, eps=float("nan"))


def test_wrong_preconditioner_shapes():
    with pytest.raises(ValueError, match=r"L must have shape \(\.\.\., 6, 6\)"):
        shampoo_direction(G, torch.eye(9), torch.eye(9))
    with pytest.raises(ValueError, match=r"ZZt must have shape \(\.\.\., 9, 9\)"):
        newton_muon_direction(G, torch.eye(6))


def test_k_too_large_and_bad_steps():
    with pytest.raises(ValueError, match=r"k=7 is larger than min\(m, n\)=6"):
        top_singular(G, 7)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        top_singular(G, 0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        msgn(G, steps=0)
    with pytest.raises(ValueError, match=r"init must have shape \(\.\.\., n=9, j\)"):
        top_singular(G, 2, init=torch.randn(6, 2))


def test_threshold_rejects_negative_values():
    with pytest.raises(ValueError, match="singular values"):
        fstar_threshold(torch.tensor([1.0, -0.5]))

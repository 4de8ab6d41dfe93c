"""Property tests over random shapes (hypothesis): shapes and dtypes are preserved, msgn is a partial
isometry, thresholds solve their equations, and batching equals looping."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steepest.directions import (
    fstar_direction,
    fstar_threshold,
    msgn,
    nuclear_direction,
    sign_direction,
    spectral_direction,
)

shapes = st.tuples(
    st.sampled_from([(), (2,), (2, 3)]),
    st.integers(min_value=1, max_value=24),
    st.integers(min_value=1, max_value=24),
)


def make(batch, m, n, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, m, n, generator=gen, dtype=dtype)


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 2**16))
def test_shapes_and_dtypes_preserved(shape, seed):
    batch, m, n = shape
    for dtype in (torch.float32, torch.float64):
        G = make(batch, m, n, seed, dtype)
        for D in (
            msgn(G),
            msgn(G, method="svd"),
            spectral_direction(G),
            nuclear_direction(G),
            fstar_direction(G),
            sign_direction(G),
        ):
            assert D.shape == G.shape and D.dtype == G.dtype


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 2**16))
def test_msgn_svd_is_partial_isometry(shape, seed):
    batch, m, n = shape
    X = msgn(make(batch, m, n, seed), method="svd")
    torch.testing.assert_close(X @ X.mT @ X, X, atol=1e-10, rtol=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e3, allow_nan=False, allow_subnormal=False), min_size=1, max_size=30))
def test_fstar_threshold_equation(values):
    S = torch.tensor(values, dtype=torch.float64)
    tau, r = fstar_threshold(S, with_rank=True)
    assert abs((S - tau).clamp(min=0).sum() - tau) <= 1e-9 * max(1.0, S.max().item())
    assert r.item() == int((S > tau).sum())


@settings(max_examples=30, deadline=None)
@given(shapes, st.integers(0, 2**16))
def test_batched_equals_loop(shape, seed):
    batch, m, n = shape
    G = make(batch, m, n, seed)
    flat = G.reshape(-1, m, n)
    for fn in (lambda X: msgn(X, method="svd"), nuclear_direction, fstar_direction):
        torch.testing.assert_close(fn(G).reshape(flat.shape), torch.stack([fn(g) for g in flat]), atol=1e-10, rtol=1e-10)

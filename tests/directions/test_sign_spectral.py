import math

import pytest
import torch

from steepest.directions import msgn, sign_direction, spectral_direction, spectral_scale
from steepest.directions.families import matrix_family


def test_sign_is_exact_any_shape():
    for G in (matrix_family("conv").float(), torch.randn(7), torch.randn(2, 3, 4, 5)):
        assert torch.equal(sign_direction(G), torch.sign(G))
    assert torch.equal(sign_direction(torch.zeros(3, 3)), torch.zeros(3, 3))


@pytest.mark.parametrize(
    "shape,scale,expected",
    [
        ((768, 3072), "rms_to_rms", math.sqrt(768 / 3072)),
        ((3072, 768), "rms_to_rms", 2.0),
        ((768, 3072), "original", 1.0),
        ((3072, 768), "original", 2.0),
        ((768, 3072), "match_adamw", 0.2 * math.sqrt(3072)),
        ((2, 64, 576), "original", 1.0),
    ],
)
def test_spectral_scales(shape, scale, expected):
    assert spectral_scale(shape, scale) == pytest.approx(expected)


@pytest.mark.parametrize("scale", ["rms_to_rms", "original", "match_adamw"])
def test_spectral_direction_is_scaled_msgn(scale):
    G = matrix_family("tall")
    D = spectral_direction(G, scale=scale, method="svd")
    torch.testing.assert_close(D, spectral_scale(G.shape, scale) * msgn(G, method="svd"))


@pytest.mark.parametrize("method,compute", [("polar_express", torch.float32), ("polar_express", torch.bfloat16), ("newton_schulz", torch.bfloat16)])
def test_spectral_direction_at_every_scale(method, compute):
    """A conv-shaped 512×(64·3·3) gradient at 1e-30…1e30: the error against the float64
    s(m,n)·UVᵀ may not exceed the error at scale 1 by more than 5% (the exact method's scales are
    tested in test_msgn.py; spectral_direction only multiplies msgn by s(m, n))."""
    from steepest.directions.reference import reference_msgn, relative_error

    G = torch.randn(512, 576, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ref = spectral_scale(G.shape) * reference_msgn(G)
    bar = relative_error(spectral_direction(G.float(), method=method, dtype=compute), ref)
    for scale in (1e-30, 1e-10, 1e10, 1e20, 1e30):
        D = spectral_direction((G * scale).float(), method=method, dtype=compute)
        assert relative_error(D, ref) <= 1.05 * bar + 1e-6, scale


def test_sign_at_every_scale():
    G = torch.randn(512, 256, generator=torch.Generator().manual_seed(8))
    for scale in (1e-30, 1e-10, 1e10, 1e30):
        assert torch.equal(sign_direction(G * scale), torch.sign(G))

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

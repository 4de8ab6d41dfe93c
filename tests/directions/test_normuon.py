"""NorMuon's row normalisation (steepest.directions.normuon) against a float64 loop over rows.

Shapes are realistic (GPT-2-small's 768×3072 and 3072×768, a conv 512×(256·3·3) viewed as a matrix,
a 128×128 block); ``U`` comes from float64 ``msgn`` of ill-conditioned and rank-deficient matrices
and from rows of very different scales. The function runs in float32 here: each entry goes through
a sum of ``n`` squares, a square root and sums of ``m`` row values, so its error is a few units of
float32 roundoff (6e-8) times ``√n + √m`` (random-walk accumulation; pairwise summation does
better); 1e-5 relative bounds that for m, n ≤ 4608 (≈ 8e-6).
"""

from __future__ import annotations

import pytest
import torch

from steepest.directions import msgn
from steepest.directions.normuon import row_normalized

SHAPES = [(128, 128), (3072, 768), (512, 256 * 9)]  # square, tall GPT-2 MLP (its transpose is orthonormal by rows), conv


def reference(U: torch.Tensor, v: torch.Tensor, beta2: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The formula row by row in float64: v_i ← β₂v_i + (1−β₂)·mean_j U_ij², Û_i = U_i/(√v_i + ε), ‖Û‖_F = ‖U‖_F."""
    U, v = U.double(), v.double().clone()
    out = torch.empty_like(U)
    for i in range(U.shape[0]):
        v[i] = beta2 * v[i] + (1 - beta2) * (U[i] ** 2).mean()
        out[i] = U[i] / (v[i].sqrt() + eps)
    return out * (U.norm() / out.norm()), v


def orthogonalised(m: int, n: int, kind: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(m, n, generator=gen, dtype=torch.float64)
    if kind == "row_scales":  # rows of sizes 1e-3 … 1e3: msgn keeps their norms unequal
        G = G * torch.logspace(-3, 3, m, dtype=torch.float64)[:, None]
    elif kind == "rank_deficient":
        G = G[:, :8] @ torch.randn(8, n, generator=gen, dtype=torch.float64)
    elif kind == "ill_conditioned":
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        G = (U * torch.logspace(0, -8, min(m, n), dtype=torch.float64)) @ Vh
    return msgn(G, method="svd")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["gaussian", "row_scales", "rank_deficient", "ill_conditioned"])
def test_matches_float64_over_two_steps(shape, kind):
    m, n = shape
    v = torch.zeros(m, dtype=torch.float32)
    v_ref = torch.zeros(m, dtype=torch.float64)
    for step in range(2):
        U = orthogonalised(m, n, kind, seed=step)
        D, v = row_normalized(U.float(), v)
        ref, v_ref = reference(U, v_ref, 0.95, 1e-8)
        assert D.dtype == torch.float32 and v.dtype == torch.float32
        assert (D.double() - ref).norm() / ref.norm() <= 1e-5
        assert ((v.double() - v_ref).abs() / v_ref.abs().clamp(min=1e-30)).max() <= 1e-5


def test_frobenius_norm_is_kept_and_rows_are_equalised():
    U = orthogonalised(512, 256, "row_scales").float()  # tall: msgn's rows are not of equal norm
    v = torch.zeros(512)
    for _ in range(50):  # v converges to the rows' mean squares: every row then has RMS ≈ the same
        D, v = row_normalized(U, v)
    assert abs(D.norm() / U.norm() - 1) <= 1e-5
    rms = D.square().mean(dim=1).sqrt()
    assert rms.max() / rms.min() <= 1 + 1e-3
    assert U.square().mean(dim=1).sqrt().max() / U.square().mean(dim=1).sqrt().min() > 2  # there was something to equalise


def test_zero_update_gives_zero_not_nan_and_batches_match_single_matrices():
    D, v = row_normalized(torch.zeros(3, 128, 256), torch.zeros(3, 128))
    assert torch.equal(D, torch.zeros_like(D)) and torch.equal(v, torch.zeros_like(v))
    U = torch.stack([orthogonalised(128, 256, "gaussian", seed=s) for s in range(3)]).float()
    v0 = torch.rand(3, 128) * 1e-3
    D, v = row_normalized(U, v0)
    for i in range(3):
        Di, vi = row_normalized(U[i], v0[i])
        torch.testing.assert_close(D[i], Di, rtol=1e-6, atol=0)
        torch.testing.assert_close(v[i], vi, rtol=1e-6, atol=0)


def test_bf16_input_is_computed_in_float32_and_returned_in_bf16():
    U = orthogonalised(128, 384, "gaussian")
    D, v = row_normalized(U.bfloat16(), torch.zeros(128))
    ref, _ = reference(U.bfloat16().double(), torch.zeros(128, dtype=torch.float64), 0.95, 1e-8)
    assert D.dtype == torch.bfloat16 and v.dtype == torch.float32
    assert (D.double() - ref).norm() / ref.norm() <= 2**-8  # one bf16 rounding of the result


def test_bad_v_names_its_expected_shape():
    with pytest.raises(ValueError, match=r"v must have shape \(128,\) \(one entry per row of U\), got \(256,\)"):
        row_normalized(torch.zeros(128, 256), torch.zeros(256))

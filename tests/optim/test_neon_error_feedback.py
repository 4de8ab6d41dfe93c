"""Neon with Dion's error feedback against a float64 reference of its recurrence.

Per matrix, ``B ← B + (1 − μ)G``; ``D`` = Neon's direction of ``B``; ``C`` = the captured part
(``σ₁u₁v₁ᵀ`` nuclear, ``U_rΣ_rV_rᵀ`` F*); ``B ← B − (1 − μ)C``; ``W ← W − η·D``. The reference
runs it with full float64 SVDs and thresholds by bisection (``steepest.directions.reference``).
Tolerance: 1e-3 relative on the weights and the momentum after 6 steps at 256×128 (float32
iteration; measured ≤ 1e-4), which a missing or mis-weighted feedback term breaks by orders of
magnitude (it changes B by (1 − μ)‖C‖ every step).
"""

import pytest
import torch
from torch import nn

from steepest import Neon
from steepest.directions.families import random_orthonormal
from steepest.directions.reference import bisect_root, relative_error, svd64

MU, LR, STEPS = 0.9, 0.1, 6


def gradients(m: int, n: int, seed: int) -> list[torch.Tensor]:
    """Float64 gradients with fixed singular vectors and spectra ``0.6^i`` scaled per step (plus a
    little noise): the momentum's top direction persists, which error feedback has to move past."""
    gen = torch.Generator().manual_seed(seed)
    U, V = random_orthonormal(m, n, gen), random_orthonormal(n, n, gen)
    S = 0.6 ** torch.arange(n, dtype=torch.float64)
    return [(U * (S * (1 + 0.1 * t))) @ V.mT + 1e-3 * torch.randn(m, n, generator=gen, dtype=torch.float64) for t in range(STEPS)]


def reference(grads: list[torch.Tensor], mode: str, sigma: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence in float64: final ``(W, B)``."""
    B = torch.zeros_like(grads[0])
    W = torch.zeros_like(grads[0])
    for G in grads:
        B = B + (1 - MU) * G
        U, S, V = svd64(B)
        if mode == "nuclear":
            d = S[:1] if sigma == "keep" else torch.ones(1, dtype=S.dtype)
            D = (U[:, :1] * d) @ V[:, :1].T
            r = 1
        else:
            tau = bisect_root(lambda t: (S - t).clamp(min=0).sum() - t, torch.zeros(()), S[0].clone())
            d = (S - tau).clamp(min=0)
            D = (U * (d if sigma == "keep" else d / d[0])) @ V.T
            r = int((S > tau).sum())
        C = (U[:, :r] * S[:r]) @ V[:, :r].T
        B = B - (1 - MU) * C
        W = W - LR * D
    return W, B


@pytest.mark.parametrize("mode,sigma", [("nuclear", "keep"), ("nuclear", "drop"), ("fstar", "keep"), ("fstar", "drop")])
def test_matches_float64_recurrence(mode, sigma):
    grads = gradients(256, 128, seed=0)
    W = nn.Parameter(torch.zeros(256, 128))
    opt = Neon([W], lr=LR, mode=mode, sigma=sigma, momentum=MU, nesterov=False, error_feedback=True, iters=4)
    for G in grads:
        W.grad = G.float()
        opt.step()
    W_ref, B_ref = reference(grads, mode, sigma)
    assert relative_error(W.detach(), W_ref) <= 1e-3
    assert relative_error(opt.state[W]["momentum_buffer"], B_ref) <= 1e-3
    assert not any(k.startswith("captured") for k in opt.state[W])  # consumed within the step, never checkpointed


def test_feedback_reaches_the_directions_left_behind():
    """A constant gradient with σ = 0.6^i: plain Neon nuclear repeats u₁v₁ᵀ (its 40 steps sum to
    rank 1); with error feedback the steps move on, and their sum has ≥ 3 singular values above
    1% of its largest."""
    G = gradients(256, 128, seed=1)[0].float()
    sums = {}
    for feedback in (False, True):
        W = nn.Parameter(torch.zeros(256, 128))
        opt = Neon([W], lr=1.0, mode="nuclear", momentum=MU, nesterov=False, error_feedback=feedback, iters=2)
        for _ in range(40):
            W.grad = G.clone()
            opt.step()
        s = torch.linalg.svdvals(W.detach().double())
        sums[feedback] = int((s > 1e-2 * s[0]).sum())
    assert sums[False] == 1 and sums[True] >= 3, sums


def test_bf16_model_buffer_and_skip():
    """bf16 parameters: the feedback is applied to the bf16 buffer; a step skipped for a
    non-finite gradient leaves the buffer and the weights unchanged."""
    W = nn.Parameter(torch.zeros(256, 128, dtype=torch.bfloat16))
    opt = Neon([W], lr=LR, mode="fstar", momentum=MU, nesterov=False, error_feedback=True, nonfinite="skip")
    grads = gradients(256, 128, seed=2)
    W.grad = grads[0].to(torch.bfloat16)
    opt.step()
    before = (W.detach().clone(), opt.state[W]["momentum_buffer"].clone())
    bad = grads[1].to(torch.bfloat16)
    bad[0, 0] = float("nan")
    W.grad = bad
    opt.step()
    assert torch.equal(W.detach(), before[0]) and torch.equal(opt.state[W]["momentum_buffer"], before[1])
    assert opt.state[W]["momentum_buffer"].dtype == torch.bfloat16


def test_requires_nesterov_off():
    with pytest.raises(ValueError, match="nesterov=False"):
        Neon([nn.Parameter(torch.zeros(8, 8))], error_feedback=True)
    with pytest.raises(ValueError, match="error_feedback must be True or False"):
        Neon([nn.Parameter(torch.zeros(8, 8))], nesterov=False, error_feedback=1)

"""NorMuon and cautious weight decay: the optimizers' recurrences against float64 loops.

The optimizers run in float64 with ``msgn_method="svd"`` (an exact ``UVᵀ``), so the only
difference from the reference is the order of float64 operations: 1e-10 relative after 5 steps.
Sizes: a 256×128 hidden matrix, a 3072×768 GPT-2 MLP matrix, a 64×32×3×3 conv weight.
"""

from __future__ import annotations

import math

import pytest
import torch

import steepest
from steepest.optim.normuon import NorMuon

SHAPES = [(256, 128), (3072, 768), (64, 32, 3, 3)]


def gradients(shape, steps: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 2, shape[0], dtype=torch.float64).view(-1, *[1] * (len(shape) - 1))  # rows of different sizes
    return [torch.randn(shape, generator=gen, dtype=torch.float64) * scales for _ in range(steps)]


def reference_normuon(W, grads, lr, mu, beta2, eps, wd, cautious=False):
    """NorMuon in float64 (Li et al. 2025): Nesterov EMA momentum, U = UVᵀ, row EMA v, Û, Muon's scale."""
    W = W.clone()
    m, n = W.shape[0], W[0].numel()
    B = torch.zeros(m, n, dtype=torch.float64)
    v = torch.zeros(m, dtype=torch.float64)
    for G in grads:
        G = G.reshape(m, n)
        B = mu * B + (1 - mu) * G
        M = (1 - mu) * G + mu * B
        U_, _, Vh = torch.linalg.svd(M, full_matrices=False)
        U = U_ @ Vh
        v = beta2 * v + (1 - beta2) * (U**2).mean(dim=1)
        Y = U / (v.sqrt() + eps)[:, None]
        D = (Y * (U.norm() / Y.norm())).reshape(W.shape)
        mask = (torch.sign(D) == torch.sign(W)).to(W.dtype) if cautious else 1.0
        W = W - lr * wd * mask * W - lr * math.sqrt(max(1, m / n)) * D
    return W, v


@pytest.mark.parametrize("shape", SHAPES)
def test_normuon_matches_float64_recurrence(shape):
    grads = gradients(shape, 5)
    W0 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = torch.nn.Parameter(W0.clone())
    opt = NorMuon([w], lr=0.02, momentum=0.9, beta2=0.9, weight_decay=0.1, msgn_method="svd")
    for g in grads:
        w.grad = g.clone()
        opt.step()
    ref, v = reference_normuon(W0, grads, 0.02, 0.9, 0.9, 1e-8, 0.1)
    assert (w.detach() - ref).norm() / ref.norm() <= 1e-10
    assert torch.allclose(opt.state[w]["row_second_moment"], v, rtol=1e-10, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_cautious_weight_decay_matches_float64(shape):
    grads = gradients(shape, 4, seed=2)
    W0 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    w = torch.nn.Parameter(W0.clone())
    opt = NorMuon([w], lr=0.05, momentum=0.9, beta2=0.95, weight_decay=0.5, msgn_method="svd", cautious_weight_decay=True)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    ref, _ = reference_normuon(W0, grads, 0.05, 0.9, 0.95, 1e-8, 0.5, cautious=True)
    plain, _ = reference_normuon(W0, grads, 0.05, 0.9, 0.95, 1e-8, 0.5, cautious=False)
    assert (w.detach() - ref).norm() / ref.norm() <= 1e-10
    assert (plain - ref).norm() / ref.norm() > 1e-3  # the mask made a difference


@pytest.mark.parametrize("name", ["muon", "neon-nuclear", "dion", "shampoo", "sign"])
def test_cautious_decay_only_where_update_and_weight_agree(name):
    """One step from a zero momentum: the entries with sign(D) ≠ sign(W) are moved by the update
    alone (as with weight_decay=0), the others also decayed by lr·wd·W. In float64, so that the
    update's sign survives the subtraction ``W_after − W0`` (in float32 it rounds to 0 where ``D`` is
    below 1e-7 of ``W``)."""
    torch.manual_seed(0)
    W0 = torch.randn(256, 128, dtype=torch.float64)
    G = torch.randn(256, 128, dtype=torch.float64)
    results = {}
    for wd, cautious in ((0.0, False), (0.5, True)):
        w = torch.nn.Parameter(W0.clone())
        reg = steepest.optim.OPTIMIZERS[name]
        opt = reg.build([w], lr=0.01, weight_decay=wd, cautious_weight_decay=cautious)
        w.grad = G.clone()
        opt.step()
        results[cautious] = w.detach().clone()
    step = results[False] - W0  # −lr·s·D
    agree = torch.sign(-step) == torch.sign(W0)
    expected = torch.where(agree, W0 - 0.01 * 0.5 * W0, W0) + step
    torch.testing.assert_close(results[True], expected, rtol=1e-12, atol=1e-14)
    assert 0.2 < agree.float().mean() < 0.8


def test_normuon_state_is_float32_on_bf16_weights_and_skipped_steps_leave_it():
    w = torch.nn.Parameter(torch.randn(256, 128).bfloat16())
    opt = NorMuon([w], nonfinite="skip")
    w.grad = torch.randn(256, 128).bfloat16()
    opt.step()
    v = opt.state[w]["row_second_moment"].clone()
    assert v.dtype == torch.float32 and v.shape == (256,) and bool((v > 0).all())
    before = w.detach().clone()
    w.grad = torch.full((256, 128), float("nan")).bfloat16()
    opt.step()
    assert torch.equal(opt.state[w]["row_second_moment"], v) and torch.equal(w.detach(), before)

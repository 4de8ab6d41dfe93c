"""steepest.optim.Dion against a float64 reference of the paper's recurrence (Ahn et al. 2025, Alg. 1).

The reference below is written from the formulas alone, in plain float64 torch:
``B = M + G; P = orth(BQ); R = BᵀP; M ← B − (1−μ)PRᵀ; Q ← R/‖R‖_col; W ← W − η√max(1, m/n)·PQᵀ``,
started from the same ``Q`` (:func:`~steepest.directions.dion.initial_basis`, an input here).
For bf16 weights it rounds ``B``, ``M``, the update and ``W`` to bf16 where the optimizer stores
them, so that the comparison measures the float32 arithmetic only.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import steepest
from steepest.directions.dion import dion_rank, initial_basis
from steepest.distributed.partition import direction_flops
from steepest.optim.base import MatrixOptimizer
from steepest.optim.dion import Dion

SHAPES = [(512, 256), (256, 512), (768, 3072)]
LR, MU = 0.02, 0.95


def gradients(shape, steps: int, seed: int) -> list[torch.Tensor]:
    """Gradients with a persistent low-rank part (a decaying spectrum) and fresh noise each step."""
    gen = torch.Generator().manual_seed(seed)
    m, n = shape[0], math.prod(shape[1:])
    k = min(m, n, 64)
    U, V = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    s = (1 + torch.arange(k, dtype=torch.float32)) ** -0.7
    out = []
    for _ in range(steps):
        out.append((((U * s) @ V.T) / math.sqrt(m * n) + 0.3 * torch.randn(m, n, generator=gen) / math.sqrt(m * n)).reshape(shape))
    return out


def reference(W0: torch.Tensor, grads: list[torch.Tensor], fraction: float = 0.25, stored=torch.float32):
    """Float64 Dion; ``stored`` is the dtype in which W, G and M are kept between operations."""
    rnd = lambda x: x.to(stored).double()  # noqa: E731
    m, n = W0.shape[0], math.prod(W0.shape[1:])
    r = dion_rank((m, n), fraction)
    W = W0.double().reshape(m, n)
    M = torch.zeros(m, n, dtype=torch.float64)
    Q = initial_basis(n, r).double()
    kappa = 1.0
    for G in grads:
        B = rnd(M + rnd(G.reshape(m, n)))
        kappa = max(kappa, float(torch.linalg.cond(B @ Q)))
        P = torch.linalg.qr(B @ Q).Q
        R = B.T @ P
        M = rnd(B - (1 - MU) * P @ R.T)
        Q = R / R.norm(dim=0, keepdim=True)
        D = rnd(P @ Q.T)
        W = rnd(W - LR * math.sqrt(max(1, m / n)) * D)
    return W.reshape(W0.shape), M, Q, kappa


def run_dion(W0: torch.Tensor, grads: list[torch.Tensor], **options):
    W = nn.Parameter(W0.clone())
    opt = Dion([W], lr=LR, momentum=MU, **options)
    for G in grads:
        W.grad = G.to(W.dtype)
        opt.step()
    return W.detach(), opt.state[W]


def aligned(Q: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``Q``'s columns with the signs of ``ref``'s (a QR's column signs are a convention)."""
    return Q * torch.sign((Q * ref).sum(0, keepdim=True))


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_matches_float64_recurrence(shape):
    """4 steps (2 at 768x3072, enough for the warm start). The float32 QR of ``BQ`` loses about
    ``u·κ(BQ)`` (u = 2^-24); from the second step ``Q ∝ BᵀP``, so ``κ(BQ)`` grows to ~1e3-1e4 on
    these gradients. Tolerance: ``4·u·κ`` relative, for the total update W − W0, for M and for Q's
    columns (measured errors are 5-10x below it)."""
    steps = 4 if shape != (768, 3072) else 2
    gen = torch.Generator().manual_seed(0)
    W0 = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
    grads = gradients(shape, steps, seed=1)
    W, state = run_dion(W0, grads)
    W64, M64, Q64, kappa = reference(W0, grads)
    tol = 4 * 2**-24 * kappa
    dW = W64 - W0.double()
    assert (W.double() - W64).abs().max() <= tol * dW.abs().max()
    assert (state["momentum_buffer"].double() - M64).abs().max() <= tol * M64.abs().max()
    Q = state["dion_Q"].double()
    assert state["dion_Q"].dtype == torch.float32
    assert (aligned(Q, Q64) - Q64).abs().max() <= tol
    assert set(state) == {"step", "momentum_buffer", "dion_Q"}  # P and the norms are not kept


@pytest.mark.parametrize("shape", [(512, 256), (256, 512), (256, 128, 3, 3)])
def test_bf16_weights_match_float64_recurrence(shape):
    """bf16 weights, float32 Q, 4 steps; the reference rounds W, G, B, M and the update to bf16 as
    stored. Tolerances: 2 bf16 ulps (2^-7 relative) of the largest entry for M, 2 ulps of max|W| for
    W (a float32-vs-float64 difference flips a rounding by one ulp now and then)."""
    gen = torch.Generator().manual_seed(2)
    W0 = (torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))).bfloat16()
    grads = [g.bfloat16() for g in gradients(shape, 4, seed=3)]
    W, state = run_dion(W0, grads)
    W64, M64, _, _ = reference(W0, grads, stored=torch.bfloat16)
    assert W.dtype == torch.bfloat16 and state["momentum_buffer"].dtype == torch.bfloat16
    assert state["dion_Q"].dtype == torch.float32
    assert (W.double() - W64).abs().max() <= 2**-7 * W64.abs().max()
    M = state["momentum_buffer"].double().reshape(M64.shape)
    assert (M - M64).abs().max() <= 2**-7 * M64.abs().max()
    assert (W.double() != W0.double()).float().mean() > 0.5  # the steps are not lost to bf16 rounding


def test_update_is_P_times_Q_transpose_with_orthonormal_P():
    """One step from zero momentum: ΔW/(−lr·s) = P Qᵀ, so its singular values are those of Q and
    its left singular vectors span an r-dimensional space (PᵀP = I)."""
    shape = (512, 256)
    W = nn.Parameter(torch.zeros(shape))
    opt = Dion([W], lr=1.0, momentum=MU)
    W.grad = gradients(shape, 1, seed=4)[0]
    opt.step()
    D = -W.detach().double() / math.sqrt(max(1, 512 / 256))
    Q = opt.state[W]["dion_Q"].double()
    r = Q.shape[1]
    s_D = torch.linalg.svdvals(D)
    assert (s_D[:r] - torch.linalg.svdvals(Q)).abs().max() < 1e-5
    assert s_D[r:].abs().max() < 1e-5  # rank r exactly


def test_gradients_that_come_and_go():
    """Two same-shape matrices stepped together equal each stepped alone, when one of them has no
    gradient on some steps (it does not move and its state does not change on those steps) and a
    third appears late (its Q starts then). Tolerance 1e-6 relative: batched and single products
    may round differently on other BLAS kernels."""
    shape = (256, 128)
    gen = torch.Generator().manual_seed(5)
    W0 = [torch.randn(shape, generator=gen) / 16 for _ in range(3)]
    grads = [gradients(shape, 5, seed=10 + i) for i in range(3)]
    present = [[True] * 5, [True, False, True, False, True], [False, False, False, True, True]]
    together = [nn.Parameter(w.clone()) for w in W0]
    opt = Dion(together, lr=LR)
    alone = [nn.Parameter(w.clone()) for w in W0]
    opts = [Dion([p], lr=LR) for p in alone]
    for t in range(5):
        for i in range(3):
            together[i].grad = grads[i][t].clone() if present[i][t] else None
            alone[i].grad = grads[i][t].clone() if present[i][t] else None
        before = together[1].detach().clone()
        opt.step()
        for i in range(3):
            if present[i][t]:
                opts[i].step()
        if not present[1][t]:
            assert torch.equal(before, together[1].detach())
    for a, b in zip(together, alone):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max()
    assert int(opt.state[together[2]]["step"]) == 2


def test_nonfinite_skip_leaves_weights_momentum_and_basis_unchanged():
    shape = (256, 128)
    grads = gradients(shape, 3, seed=6)
    W = nn.Parameter(torch.randn(shape) / 16)
    opt = Dion([W], lr=LR, nonfinite="skip", weight_decay=0.1)
    W.grad = grads[0].clone()
    opt.step()
    saved = {k: v.clone() for k, v in opt.state[W].items() if k != "step"}
    w = W.detach().clone()
    bad = grads[1].clone()
    bad[3, 4] = float("nan")
    W.grad = bad
    opt.step()
    assert torch.equal(W.detach(), w)
    for k, v in saved.items():
        assert torch.equal(opt.state[W][k], v), k


def _train(model_dtype: torch.dtype, steps: int, state: dict | None = None, start: int = 0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)).to(model_dtype)
    opt = steepest.build_optimizer(model, "dion", lr=LR)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    for t in range(start, start + steps):
        gen = torch.Generator().manual_seed(t)
        x, y = torch.randn(32, 64, generator=gen).to(model_dtype), torch.randint(0, 10, (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).float(), y).backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resume_is_exact(dtype):
    """6 steps straight equal 3 steps, a torch.save/torch.load round trip, and 3 more (bit for bit:
    the same computation run twice); Q stays float32 in a bf16 model."""
    straight, _ = _train(dtype, 6)
    model, opt = _train(dtype, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    resumed, opt2 = _train(dtype, 3, torch.load(buffer, weights_only=True), start=3)
    for p, q in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(p, q)
    dion = opt2.optimizers[0]
    assert all(s["dion_Q"].dtype == torch.float32 for s in dion.state.values())


def test_build_optimizer_splits_like_muon():
    model = nn.Sequential(nn.Embedding(50, 32), nn.Linear(32, 64), nn.ReLU(), nn.Conv1d(64, 64, 3), nn.Linear(64, 50))
    opt = steepest.build_optimizer(model, "dion")
    dion, adamw = opt.optimizers
    assert isinstance(dion, Dion) and isinstance(adamw, torch.optim.AdamW)
    assert {id(p) for p in dion.param_groups[0]["params"]} == {id(model[1].weight), id(model[3].weight)}
    assert dion.param_groups[0]["lr"] == 0.02 and dion.param_groups[0]["rank_fraction"] == 0.25


def test_direction_flops_is_what_the_partitioner_uses():
    W = nn.Parameter(torch.zeros(768, 3072))
    opt = Dion([W], rank_fraction=0.25)
    group = opt.param_groups[0]
    r = dion_rank((768, 3072), 0.25)
    assert direction_flops(opt, group, (768, 3072)) == 6 * 768 * 3072 * r + 4 * 768 * r * r

    class Plain(MatrixOptimizer):  # states no cost: the base class's m·n·min(m, n)
        pass

    plain = Plain([nn.Parameter(torch.zeros(8, 4))], dict(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, nonfinite="raise"))
    assert direction_flops(plain, plain.param_groups[0], (8, 4)) == 8 * 4 * 4


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(rank_fraction=0), "rank_fraction"),
        (dict(rank_fraction=1.5), "rank_fraction"),
        (dict(rank_fraction="1/4"), "rank_fraction"),
        (dict(scale="paper"), "scale"),
        (dict(momentum=1.0), "momentum"),
        (dict(lr=-1.0), "lr"),
    ],
)
def test_bad_options_raise_one_clear_error(options, match):
    with pytest.raises(ValueError, match=match):
        Dion([nn.Parameter(torch.zeros(8, 8))], **options)


def test_vectors_are_refused_with_a_hint():
    with pytest.raises(ValueError, match="AdamW"):
        Dion([nn.Parameter(torch.zeros(8))])

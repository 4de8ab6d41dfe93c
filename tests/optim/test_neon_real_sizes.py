"""Neon F* at the sizes of real layers (min(m, n) ≥ 128): the block follows the rank, within the step.

The F* rank of a matrix is set by its spectrum: with ``r`` singular values near 1 and the rest at
most 0.2, the seed's threshold is ``τ ≈ r/(r + 1)`` and the rank is exactly ``r`` (checked against
the float64 threshold). Every update is compared with the float64 F* direction of the same
gradient (momentum 0, so ``M = G``); the tolerance, 1e-3 relative in float32 (measured: ≤ 3e-5) and
2e-2 in bf16 (the bf16 update's rounding, 2⁻⁸), is what a width too small to hold the rank
breaks: with the block stuck at 16 columns a rank-40 update has error ≈ 0.2–1.
"""

import io

import pytest
import torch
from torch import nn

from steepest import Neon
from steepest.directions.families import random_orthonormal
from steepest.directions.fstar import fstar_threshold
from steepest.directions.reference import bisect_root, reference_fstar, relative_error
from steepest.optim.neon import block_columns

M_ROWS, N_COLS = 512, 256
TOL = {torch.float32: 1e-3, torch.bfloat16: 2e-2}


def spectrum(rank: int, n: int) -> torch.Tensor:
    """``rank`` values in [1, 1.02], then a tail decaying from 0.2: F* rank exactly ``rank``."""
    i = torch.arange(n, dtype=torch.float64)
    head = 1 + 0.02 * (rank - 1 - i[:rank]) / rank
    return torch.cat([head, 0.2 * torch.exp(-(i[rank:] - rank) / 30)])


class Gradients:
    """Gradients ``U diag(S) Vᵀ`` of a given F* rank whose left singular vectors drift every step
    (a plane rotation by 0.05 rad of column j with column j + n/2), in float64."""

    def __init__(self, m: int, n: int, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.U, self.V = random_orthonormal(m, n, self.gen), random_orthonormal(n, n, self.gen)
        self.S = None

    def __call__(self, rank: int) -> torch.Tensor:
        n = self.U.shape[1]
        a, b = self.U[:, : n // 2], self.U[:, n // 2 :]
        c, s = torch.cos(torch.tensor(0.05, dtype=torch.float64)), torch.sin(torch.tensor(0.05, dtype=torch.float64))
        self.U = torch.cat([c * a + s * b, c * b - s * a], dim=1)
        self.S = spectrum(rank, n)
        return (self.U * self.S) @ self.V.mT

    def reference(self) -> torch.Tensor:
        """The float64 F* (seed) of the last gradient from its known SVD: τ by bisection."""
        S = self.S
        tau = bisect_root(lambda t: (S - t).clamp(min=0).sum() - t, torch.zeros(()), S[0].clone())
        return (self.U * (S - tau).clamp(min=0)) @ self.V.mT


@pytest.mark.parametrize("rank", [1, 2, 40])
def test_spectrum_has_the_stated_rank(rank):
    assert int(fstar_threshold(spectrum(rank, N_COLS), with_rank=True)[1]) == rank


def update(opt: Neon, W: nn.Parameter, G: torch.Tensor) -> torch.Tensor:
    """The step's ``D`` (lr = 1, W = 0 before each step, so ``D = −W`` exactly)."""
    with torch.no_grad():
        W.zero_()
    W.grad = G.to(W.dtype)
    opt.step()
    return -W.detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rank_tracking_1_40_1_matches_float64_every_step(dtype):
    grads = Gradients(M_ROWS, N_COLS)
    W = nn.Parameter(torch.zeros(M_ROWS, N_COLS, dtype=dtype))
    opt = Neon([W], lr=1.0, mode="fstar", momentum=0.0)
    for step, rank in enumerate([1, 1, 40, 40, 40, 1, 1]):
        G = grads(rank).to(dtype)
        D = update(opt, W, G)
        # float32: the known SVD; bf16: the gradient the optimizer sees, rounded (a full SVD)
        err = relative_error(D, grads.reference() if dtype == torch.float32 else reference_fstar(G.double()))
        assert err <= TOL[dtype], (step, rank, err)
        assert int(opt.state[W]["rank"]) == rank
        # the stored basis has the width the step started with: that of the previous rank
        assert opt.state[W]["basis"].shape == (N_COLS, block_columns(([4, 1, 1, 40, 40, 40, 1][step]) + 1, 8, M_ROWS, N_COLS))
        assert opt.state[W]["basis"].dtype == torch.float32 and opt.state[W]["rank"].dtype == torch.int64


@pytest.mark.parametrize("variant", ["seed", "mean_of_norms"])
def test_rank_jump_2_to_40_is_exact_on_that_step(variant):
    """The block starts at 16 columns (previous rank 2) and grows to 32, then 64 within the step."""
    grads = Gradients(M_ROWS, N_COLS, seed=1)
    W = nn.Parameter(torch.zeros(M_ROWS, N_COLS))
    opt = Neon([W], lr=1.0, mode="fstar", momentum=0.0, variant=variant, initial_rank=2)
    for rank in (2, 2, 40):
        G = grads(rank)
        D = update(opt, W, G)
        ref = grads.reference() if variant == "seed" else reference_fstar(G, variant)
        assert relative_error(D, ref) <= 1e-3
    assert opt.state[W]["basis"].shape == (N_COLS, 16)  # the width announced for this step


def test_rank_beyond_the_block_limit_falls_back_to_the_dense_svd_within_the_step():
    """dense_fraction 0.125 of 256 caps the block at 32 columns; rank 40 needs 49 → dense SVD."""
    grads = Gradients(M_ROWS, N_COLS, seed=2)
    W = nn.Parameter(torch.zeros(M_ROWS, N_COLS))
    opt = Neon([W], lr=1.0, mode="fstar", momentum=0.0, dense_fraction=0.125, initial_rank=1)
    for rank in (1, 40, 40, 1):
        G = grads(rank)
        assert relative_error(update(opt, W, G), grads.reference()) <= 1e-3
    assert int(opt.state[W]["rank"]) == 1


def test_batch_with_different_ranks_each_matrix_exact():
    """One bucket of 4 same-shape matrices with ranks 1, 40, 3, 40: each update matches float64."""
    gens = [Gradients(256, 128, seed=s) for s in range(4)]
    Ws = [nn.Parameter(torch.zeros(256, 128)) for _ in range(4)]
    opt = Neon(Ws, lr=1.0, mode="fstar", momentum=0.0, dense_fraction=0.5)
    for ranks in ([1, 1, 1, 1], [1, 40, 3, 40], [40, 1, 40, 3]):
        Gs = [g(r) for g, r in zip(gens, ranks)]
        with torch.no_grad():
            for W, G in zip(Ws, Gs):
                W.zero_()
                W.grad = G.float()
        opt.step()
        for W, g, r in zip(Ws, gens, ranks):
            assert relative_error(-W.detach(), g.reference()) <= 1e-3
            assert int(opt.state[W]["rank"]) == r


def test_gradients_that_come_and_go_on_same_shape_parameters():
    """Parameters that skip steps keep bases of other widths; the bucket cuts or pads them, and the
    remembered rank of a batch whose membership changed is not reused (the width follows the ranks
    the matrices actually hold)."""
    gens = {name: Gradients(256, 128, seed=10 + i) for i, name in enumerate("abc")}
    Ws = {name: nn.Parameter(torch.zeros(256, 128)) for name in "abc"}
    opt = Neon(list(Ws.values()), lr=1.0, mode="fstar", momentum=0.0, dense_fraction=0.5, initial_rank=1)
    schedule = [
        {"a": 40, "b": 1},  # widths 16
        {"a": 1},  # a alone: width from a's rank 40 → 56
        {"a": 1, "b": 1, "c": 40},  # a's basis 56 wide, b's 16, c has none
        {"b": 1, "c": 1},
        {"a": 40, "b": 1, "c": 1},
    ]
    for present in schedule:
        Gs = {name: gens[name](r) for name, r in present.items()}
        for name, W in Ws.items():
            with torch.no_grad():
                W.zero_()
            W.grad = Gs[name].float() if name in Gs else None
        opt.step()
        for name in Gs:
            assert relative_error(-Ws[name].detach(), gens[name].reference()) <= 1e-3, (present, name)
            assert int(opt.state[Ws[name]]["rank"]) == present[name]
    # step 4 ({b, c}, both previously at ranks 1 and 40) stored width 56; step 5 starts from the
    # ranks a=1, b=1, c=1 that the matrices hold, not from a stale memo of {a, b, c} (40)
    widths = {name: opt.state[W]["basis"].shape[-1] for name, W in Ws.items()}
    assert widths == {"a": 16, "b": 16, "c": 16}


def test_nuclear_keeps_sixteen_columns_and_matches_float64():
    from steepest.directions.reference import reference_nuclear

    grads = Gradients(M_ROWS, N_COLS, seed=3)
    W = nn.Parameter(torch.zeros(M_ROWS, N_COLS))
    opt = Neon([W], lr=1.0, mode="nuclear", momentum=0.0, iters=2)
    for rank in (1, 40, 1):
        grads(rank)  # drift the subspaces
        G = (grads.U * torch.cat([torch.tensor([3.0], dtype=torch.float64), spectrum(rank, N_COLS)[1:]])) @ grads.V.mT  # σ₁ gap
        assert relative_error(update(opt, W, G), reference_nuclear(G)) <= 1e-3
    assert opt.state[W]["basis"].shape == (N_COLS, 16)


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(128, 256, bias=False)
        self.b = nn.Linear(128, 256, bias=False)
        self.c = nn.Linear(256, 128, bias=False)

    def forward(self, x):
        return self.c(torch.tanh(self.a(x)) * torch.sigmoid(self.b(x)))


def _train(model, opt, steps, start):
    for t in range(start, start + steps):
        gen = torch.Generator().manual_seed(500 + t)
        x = torch.randn(64, 128, generator=gen).to(torch.bfloat16)
        y = torch.randn(64, 128, generator=gen)
        opt.zero_grad()
        nn.functional.mse_loss(model(x).float(), y).backward()
        opt.step()


@pytest.mark.parametrize("mode", ["fstar", "nuclear"])
def test_bf16_model_resumes_exactly(mode):
    """bf16 model, 3 steps, save, load into a fresh optimizer on a copy, 3 more steps: the same
    parameters (bit for bit: the same computation run twice) and state dtypes as uninterrupted."""

    def build():
        torch.manual_seed(0)
        model = TwoLayer().to(torch.bfloat16)
        return model, Neon(model.parameters(), lr=0.02, mode=mode, initial_rank=1)

    model, opt = build()
    _train(model, opt, 6, 0)

    half, opt_half = build()
    _train(half, opt_half, 3, 0)
    buffer = io.BytesIO()
    torch.save({"model": half.state_dict(), "opt": opt_half.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, opt_resumed = build()
    resumed.load_state_dict(saved["model"])
    opt_resumed.load_state_dict(saved["opt"])
    for p, q in zip(resumed.parameters(), half.parameters()):
        state, saved_state = opt_resumed.state[p], opt_half.state[q]
        assert state["basis"].dtype == torch.float32 and torch.equal(state["basis"], saved_state["basis"])
        if mode == "fstar":
            assert state["rank"].dtype == torch.int64 and torch.equal(state["rank"], saved_state["rank"])
    _train(resumed, opt_resumed, 3, 3)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("mode", ["nuclear", "fstar"])
def test_extreme_scales_match_the_error_at_scale_one(mode):
    """Neon's fixed-iteration path on 512×256 gradients scaled by 1e-30 … 1e30 (float32): each
    update's error against float64 stays that at scale 1 (bar: 2× it plus 1e-6)."""
    from steepest.directions.reference import reference_nuclear

    def errors(scale: float) -> list[float]:
        grads = Gradients(M_ROWS, N_COLS, seed=4)
        W = nn.Parameter(torch.zeros(M_ROWS, N_COLS))
        opt = Neon([W], lr=1.0, mode=mode, momentum=0.0, initial_rank=1)
        out = []
        for rank in (1, 40, 1):
            G = grads(rank) * scale
            if mode == "nuclear":
                G = G + 2 * scale * grads.U[:, :1] @ grads.V[:, :1].T  # a σ₁ gap
            G = G.float().double()
            ref = reference_nuclear(G) if mode == "nuclear" else reference_fstar(G)
            out.append(relative_error(update(opt, W, G), ref))
        return out

    bar = errors(1.0)
    for scale in (1e-30, 1e-20, 1e20, 1e30):
        got = errors(scale)
        assert all(g <= 2 * b + 1e-6 for g, b in zip(got, bar)), (scale, got, bar)

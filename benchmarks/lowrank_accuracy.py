"""Accuracy of Neon's warm-started block power iteration on real gradients, against float64.

    python benchmarks/lowrank_accuracy.py                      # digits-mlp, digits-cnn, shakespeare-gpt (small)
    python benchmarks/lowrank_accuracy.py --tasks shakespeare-gpt --capture-at 200

Trains each task with Muon for ``--capture-at`` steps, then captures the Nesterov momentum ``M`` of
every hidden matrix at ``--consecutive`` consecutive steps (what Neon's direction is computed from),
and runs :func:`steepest.directions.top_singular` on them: cold (a fixed random start) with 1, 2, 4,
8 iterations, and warm (from the previous step's ``V``, as the optimizer does) with 0, 1 and 2, for
blocks of ``k + p`` columns (``p`` = 2, 8, 16). For the nuclear update (``k = 1``) and the F* update
(``k = r + 1`` from the exact spectrum) it reports, over all matrices and captured steps, the median
and worst of: σ relative error ``max_i |σ̂ᵢ − σᵢ|/σᵢ``, the subspace error ``sin θ_max(V̂, V)``, and
the update's error ``‖D̂ − D‖_F/‖D‖_F``. Neon's default block is ``k + 8`` rounded up to a multiple
of 8 columns (:func:`steepest.optim.neon.block_columns`; 16 for nuclear), with 1 (nuclear) or 2 (F*)
warm iterations: the rows labelled ``↑8``.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import steepest
from steepest.bench.tasks import get_task
from steepest.directions import top_singular
from steepest.directions.dion import dion_rank, initial_basis, next_basis, power_step
from steepest.directions.fstar import fstar_threshold, soft_threshold_update
from steepest.directions.lowrank import Triplets
from steepest.directions.nuclear import rank_one
from steepest.directions.reference import relative_error, svd64
from steepest.optim.neon import block_columns

COLD_ITERS = (1, 2, 4, 8)
WARM_ITERS = (0, 1, 2)
OVERSAMPLES = (2, 8, 16)
DEFAULT_OVERSAMPLE = 8
ROUNDED = -1  # key for Neon's default block: k + 8 rounded up to a multiple of 8
DEFAULT_ITERS = {"nuclear": 1, "fstar": 2}
COLD_OVERSAMPLE = 8


def capture(task_name: str, capture_at: int, consecutive: int, seed: int = 0) -> dict[str, list[torch.Tensor]]:
    """name → the momentum matrices M_t at steps capture_at .. capture_at + consecutive − 1."""
    task = get_task(task_name)
    cfg = task.config("muon", seed=seed, device="cpu")
    device = torch.device("cpu")
    torch.manual_seed(seed)
    problem = task.build_problem(cfg, device)
    model = task.build_model(problem, cfg.model)
    opt = steepest.build_optimizer(model, "muon", lr=cfg.lr, adamw_lr=cfg.adamw_lr, head=list(task.head))
    muon = opt.optimizers[0]
    names = {id(p): n for n, p in model.named_parameters()}
    captured: dict[str, list[torch.Tensor]] = {}
    model.train()
    for step in range(capture_at + consecutive):
        x, y = problem.train_batch(step)
        loss = problem.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= capture_at:
            for group in muon.param_groups:
                mu = group["momentum"]
                for p in group["params"]:
                    B = muon.state[p]["momentum_buffer"]
                    M = torch.lerp(p.grad, B, mu) if group["nesterov"] else B
                    captured.setdefault(names[id(p)], []).append(M.detach().reshape(M.shape[0], -1).double().clone())
    return captured


def errors(M: torch.Tensor, t: Triplets, k: int, mode: str) -> tuple[float, float, float]:
    U0, S0, V0 = svd64(M)
    S = t.S[:k].double()
    sigma = ((S - S0[:k]).abs() / S0[:k].clamp(min=1e-300)).max().item()
    Qa = torch.linalg.qr(t.V[:, :k].double()).Q
    sines = (1 - torch.linalg.svdvals(Qa.T @ V0[:, :k]).clamp(max=1) ** 2).clamp(min=0).sqrt()
    angle = sines.max().item()
    if mode == "nuclear":
        D, ref = rank_one(*t, "keep"), rank_one(U0, S0, V0, "keep")
    else:
        D, _ = soft_threshold_update(t, "seed", "keep")
        ref, _ = soft_threshold_update(Triplets(U0, S0, V0), "seed", "keep")
    return sigma, angle, relative_error(D, ref)


def study(captured: dict[str, list[torch.Tensor]]) -> dict[tuple[str, str, int, int], list[tuple[float, float, float]]]:
    """(update, start, oversample, iterations) → per matrix and step (σ err, sin θ, D err)."""
    results: dict[tuple[str, str, int, int], list] = {}
    for mats in captured.values():
        mats = [M.float() for M in mats]
        limit = min(mats[0].shape)
        for mode in ("nuclear", "fstar"):
            if mode == "nuclear":
                k = 1
            else:
                _, r = fstar_threshold(torch.linalg.svdvals(mats[0].double()), with_rank=True)
                k = min(int(r) + 1, limit)
            width = min(k + COLD_OVERSAMPLE, limit)
            for iters in COLD_ITERS:
                for M in mats:
                    t = top_singular(M, width, iters=iters, oversample=0, check_finite=False)
                    results.setdefault((mode, "cold", COLD_OVERSAMPLE, iters), []).append(errors(M.double(), t, k, mode))
            for p in OVERSAMPLES + (ROUNDED,):
                width = block_columns(k, DEFAULT_OVERSAMPLE, *mats[0].shape) if p == ROUNDED else min(k + p, limit)
                for iters in WARM_ITERS:
                    V = top_singular(mats[0], width, iters=8, oversample=0, check_finite=False).V
                    for M in mats[1:]:
                        t = top_singular(M, width, init=V, iters=iters, oversample=0, check_finite=False)
                        V = t.V
                        results.setdefault((mode, "warm", p, iters), []).append(errors(M.double(), t, k, mode))
    return results


def table(task: str, captured: dict, results: dict) -> str:
    shapes = sorted({tuple(m[0].shape) for m in captured.values()})
    lines = [
        f"### {task}: {len(captured)} matrices {shapes}, {len(next(iter(captured.values())))} consecutive steps",
        "",
        "| update | start | block k + p | iterations | σ rel. err median / worst | sin θ median / worst | D rel. err median / worst |",
        "|---|---|---|---|---|---|---|",
    ]
    def order(key: tuple[str, str, int, int]) -> tuple:
        mode, start, p, iters = key
        return mode, start, float("inf") if p == ROUNDED else p, iters  # the default block sorts last

    for (mode, start, p, iters), vals in sorted(results.items(), key=lambda kv: order(kv[0])):
        cols = []
        for j in range(3):
            xs = [v[j] for v in vals]
            cols.append(f"{statistics.median(xs):.1e} / {max(xs):.1e}")
        default = " (default)" if p == ROUNDED and iters == DEFAULT_ITERS[mode] else ""
        block = f"k + {DEFAULT_OVERSAMPLE} ↑8" if p == ROUNDED else f"k + {p}"
        lines.append(f"| {mode} | {start} | {block} | {iters}{default} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def dion_table(task: str, captured: dict[str, list[torch.Tensor]], fraction: float = 0.25) -> str:
    """Dion's one warm power iteration per step (rank ``⌈min(m, n)/4⌉``, Q carried along the captured
    steps from :func:`~steepest.directions.dion.initial_basis`): the captured part ``‖P Rᵀ‖_F`` over
    the best rank-r part ``‖M_r‖_F`` (Eckart–Young, float64 SVD), cold (first step) and warm (last)."""
    cold, warm = [], []
    for mats in captured.values():
        r = dion_rank(tuple(mats[0].shape), fraction)
        Q = initial_basis(mats[0].shape[1], r)
        for t, M in enumerate(mats):
            f = power_step(M.float(), Q)
            Q = next_basis(Q, f)
            if t in (0, len(mats) - 1):
                best = svd64(M)[1][:r].square().sum().sqrt()
                ratio = float(torch.linalg.matrix_norm(f.P.double() @ (f.Q * f.norms).double().mT) / best)
                (cold if t == 0 else warm).append(ratio)
    lines = [f"### {task}: Dion (r = min(m,n)/4) captured part / best rank-r part", "", "| start | median | worst |", "|---|---|---|"]
    for label, xs in (("cold (step 1)", cold), (f"warm (step {len(next(iter(captured.values())))})", warm)):
        lines.append(f"| {label} | {statistics.median(xs):.4f} | {min(xs):.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="digits-mlp,digits-cnn,shakespeare-gpt")
    parser.add_argument("--capture-at", type=int, default=100, help="training steps before the capture (default 100)")
    parser.add_argument("--consecutive", type=int, default=6, help="consecutive steps captured (default 6)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"torch {torch.__version__}; float32 iteration, float64 reference; captured after {args.capture_at} Muon steps\n")
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        captured = capture(name, args.capture_at, args.consecutive)
        print(table(name, captured, study(captured)))
        print()
        print(dion_table(name, captured))
        print()


if __name__ == "__main__":
    main()

"""Claim 2's "ceiling": how the size of Neon's step evolves with σ kept or dropped.

    python benchmarks/neon_step_size.py                  # digits-cnn, each optimizer at its swept rate
    python benchmarks/neon_step_size.py --task digits-mlp --results docs/results

Trains the task once per optimizer (seed 0, the task's steps and schedule; rates from the sweeps in
``--results`` when present, else the task's defaults) and records, every step, the spectral norm of
each hidden matrix's update ``‖ΔW‖₂`` divided by the scheduled learning rate ``η_t``: the step the
optimizer takes per unit of learning rate. For Muon it is the constant shape scale; for Neon with σ
dropped it is 1; for Neon with σ kept it is ``σ₁`` of the momentum (nuclear) or ``σ₁ − τ`` (F*),
which falls as training converges, so that at a fixed rate the step shrinks like a decaying
schedule. The table prints the median over matrices at a few steps, and the final accuracy.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import steepest
from steepest.bench.results import find_sweep_lr
from steepest.bench.tasks import get_task

OPTIMIZERS = ("muon", "neon-nuclear", "neon-nuclear-drop", "neon-fstar", "neon-fstar-drop")


def trace(task_name: str, optimizer: str, lr: float, steps: int | None = None, seed: int = 0) -> tuple[dict[int, float], float]:
    task = get_task(task_name)
    cfg = task.config(optimizer, lr=lr, seed=seed, steps=steps, device="cpu")
    torch.manual_seed(seed)
    problem = task.build_problem(cfg, torch.device("cpu"))
    model = task.build_model(problem, cfg.model)
    opt = steepest.build_optimizer(model, optimizer, lr=cfg.lr, adamw_lr=cfg.adamw_lr, head=list(task.head))
    matrix_opt = opt.optimizers[0]
    hidden = [p for g in matrix_opt.param_groups for p in g["params"]]
    base = [g["lr"] for g in opt.param_groups]
    sizes: dict[int, float] = {}
    model.train()
    for step in range(cfg.steps):
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * cfg.lr_factor(step)
        x, y = problem.train_batch(step)
        loss = problem.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        before = [p.detach().clone() for p in hidden]
        opt.step()
        eta = matrix_opt.param_groups[0]["lr"]
        if eta > 0:
            norms = [torch.linalg.matrix_norm((p.detach() - w).reshape(p.shape[0], -1), ord=2).item() / eta for p, w in zip(hidden, before)]
            sizes[step + 1] = statistics.median(norms)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in problem.eval_batches():
            correct += int(problem.correct(model(x), y))
            total += y.numel()
    return sizes, correct / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="digits-cnn")
    parser.add_argument("--results", default="docs/results", help="where the sweeps are (rates fall back to the task's)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the task's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    task = get_task(args.task)
    steps = args.steps or task.steps
    checkpoints = sorted({1, steps // 10, steps // 4, steps // 2, steps - 1} - {0})
    print(f"{args.task}: median over hidden matrices of ‖ΔW‖₂ / η_t (the step per unit of learning rate)\n")
    print("| optimizer | lr | " + " | ".join(f"step {s}" for s in checkpoints) + " | last / first | final accuracy |")
    print("|---|---|" + "---|" * (len(checkpoints) + 2))
    for name in OPTIMIZERS:
        try:
            lr = find_sweep_lr(args.results, args.task, name)
        except Exception:  # no sweep folder: the task's default
            lr = None
        lr = lr if lr is not None else task.default_lr(name)
        sizes, acc = trace(args.task, name, lr, args.steps)
        cells = [f"{sizes[s]:.3g}" if s in sizes else "–" for s in checkpoints]
        ratio = sizes[checkpoints[-1]] / sizes[checkpoints[0]]
        print(f"| {name} | {lr:g} | " + " | ".join(cells) + f" | {ratio:.2g} | {acc:.4f} |")


if __name__ == "__main__":
    main()

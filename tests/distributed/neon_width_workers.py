"""What each rank runs in :mod:`.test_neon_width` (spawned by :mod:`.spawn`; imported by name).

Neon F* on matrices of realistic size (min(m, n) = 128) whose F* ranks change from step to step
(1 → 40 → 1, differently per matrix, so the ranks' shares of one batch grow differently), with a
parameter whose gradient comes and goes. Every rank builds the same gradients."""

from __future__ import annotations

import torch
from torch import nn

import steepest
import steepest.distributed
from steepest.optim.base import LocalExecutor

SHAPES = [(256, 128)] * 5 + [(128, 256)] * 2
# per step, the F* rank of each matrix's gradient (None: no gradient this step)
RANKS = [
    [1, 1, 1, 1, 1, 1, 1],
    [40, 1, 40, 1, 40, 1, 40],
    [1, 40, 1, None, 1, 40, 1],
    [40, 40, 1, 40, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 1],
]


def spectrum(rank: int, n: int) -> torch.Tensor:
    """``rank`` values in [1, 1.02], then a tail decaying from 0.2: F* rank exactly ``rank``."""
    i = torch.arange(n, dtype=torch.float64)
    return torch.cat([1 + 0.02 * (rank - 1 - i[:rank]) / rank, 0.2 * torch.exp(-(i[rank:] - rank) / 30)])


def gradient(step: int, index: int, rank: int) -> torch.Tensor:
    """A float64 gradient of F* rank ``rank``, the same on every rank of the process group."""
    m, n = SHAPES[index]
    gen = torch.Generator().manual_seed(1000 * step + index)
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64)).Q
    return (U * spectrum(rank, k)) @ V.mT


def run(executor=None, error_feedback: bool = False, mode: str = "fstar") -> dict:
    """The updates ``D`` of every step (lr 1, W zeroed before each step; momentum 0, or 0.9 with
    error feedback) and the final per-matrix state (basis, rank, momentum buffer)."""
    torch.set_num_threads(1)
    params = [nn.Parameter(torch.zeros(s)) for s in SHAPES]
    momentum = dict(momentum=0.9, nesterov=False, error_feedback=True) if error_feedback else dict(momentum=0.0)
    opt = steepest.Neon(params, lr=1.0, mode=mode, initial_rank=1, dense_fraction=0.5, **momentum)
    if executor is not None:
        opt.executor = executor
    updates = []
    for step, ranks in enumerate(RANKS):
        for i, (p, r) in enumerate(zip(params, ranks)):
            with torch.no_grad():
                p.zero_()
            p.grad = None if r is None else gradient(step, i, r).float()
        opt.step()
        updates.append([None if r is None else -p.detach().clone() for p, r in zip(params, ranks)])
    keys = ("basis", "momentum_buffer") if error_feedback else ("basis",)
    keys += ("rank",) if mode == "fstar" else ()
    state = [{k: opt.state[p][k].clone() for k in keys} for p in params]
    return {"updates": updates, "state": state, "executor": type(opt.executor).__name__}


def fsdp_krylov_run() -> dict:
    """:func:`run`'s F* case with the parameters row-sharded by FSDP2 and Neon on the Krylov path
    (each rank iterates its rows; the block grows within the step like the single process's)."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.set_num_threads(1)
    holder = nn.Module()
    holder.weights = nn.ParameterList([nn.Parameter(torch.zeros(s)) for s in SHAPES])
    fully_shard(holder)
    params = list(holder.weights)
    opt = steepest.Neon(params, lr=1.0, mode="fstar", initial_rank=1, dense_fraction=0.5, momentum=0.0)
    opt.executor = steepest.distributed.DistributedExecutor(row_shards="in_place")
    updates = []
    for step, ranks in enumerate(RANKS):
        for i, (p, r) in enumerate(zip(params, ranks)):
            with torch.no_grad():
                p.to_local().zero_()
            if r is None:
                p.grad = None
                continue
            g = gradient(step, i, r).float()
            chunk = -(-g.shape[0] // p.device_mesh.size())
            start = min(p.device_mesh.get_local_rank() * chunk, g.shape[0])
            rows = p.to_local().shape[0]
            p.grad = DTensor.from_local(g[start : start + rows].clone(), p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
        opt.step()
        updates.append([None if r is None else -p.detach().full_tensor().clone() for p, r in zip(params, ranks)])
    state = [{k: opt.state[p][k].clone() for k in ("basis", "rank")} for p in params]
    return {"updates": updates, "state": state, "rows": dict(opt.executor.rows)}


def fsdp_width_change(rank: int, world: int) -> dict:
    return {"krylov": fsdp_krylov_run()}


def ddp_width_change(rank: int, world: int) -> dict:
    return {"plain": run(), "error_feedback": run(error_feedback=True), "error_feedback_nuclear": run(error_feedback=True, mode="nuclear")}


def local_run() -> dict:
    return {
        "plain": run(LocalExecutor()),
        "error_feedback": run(LocalExecutor(), error_feedback=True),
        "error_feedback_nuclear": run(LocalExecutor(), error_feedback=True, mode="nuclear"),
    }

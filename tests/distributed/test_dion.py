"""Dion under 2 gloo ranks: DDP (replicated) and FSDP2 (row-sharded) steps equal the single-process steps.

Every rank builds the same gradients (DDP: the same batch; FSDP2: the single-process run's
gradients written into the row shards), runs 4 steps, and compares with the same optimizer on the
local executor in the same process. The owner of each matrix computes ``P``, ``Q`` and the norms
exactly as one process does; every rank then applies the error feedback to its copy or rows of
``M``. No reduction over ranks touches these numbers, so the only differences are float32
roundings of batched vs unbatched (and row-sliced vs whole) products: tolerance 1e-6 on
``max|ΔW| / max|W|``, as for the other matrix optimizers (tests/distributed/test_parity.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from . import spawn

STEPS = 4
TOL = 1e-6
# r = ⌈min(m, n)/32⌉ (4 for the 256×128 matrices) ≤ 8, the rank of one step's gradient (a batch of
# 8): every column of P Qᵀ is determined by the data, not by rounding (with r = 32 the columns
# beyond the gradients' rank are rounding-determined directions that P Qᵀ weights fully, so two
# correct runs differ by O(1) there). The full-rank test below runs the default r on full-rank gradients.
RANK_FRACTION = 1 / 32
# One process adds P Q'ᵀ to float32 weights as a rank-r update (addmm: one rounding per entry and
# step); DDP and FSDP2 add the gathered, formed direction (forming, scaling, adding: three). So
# the weights may differ by 4 float32 roundings of the update per step.
FACTORED_TOL = STEPS * 4 * 2**-23


class Net(nn.Module):
    """3 × (256, 128) (uneven over 2 ranks), (128, 256), a conv weight (64, 32·3·3) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.inp = nn.Linear(64, 128)
        self.up = nn.ModuleList(nn.Linear(128, 256) for _ in range(3))
        self.down = nn.Linear(256, 128)
        self.head = nn.Linear(128, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean((2, 3))
        h = torch.relu(self.inp(h))
        h = self.down(sum(torch.tanh(layer(h)) for layer in self.up))
        return self.head(h)


def make_net(dtype: torch.dtype) -> Net:
    torch.manual_seed(0)
    return Net().to(dtype)


def matrices(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.ndim >= 2 and not n.startswith("head")]


def loss_of(model: nn.Module, step: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(8, 32, 6, 6, generator=gen).to(dtype), torch.randint(0, 5, (8,), generator=gen)
    return nn.functional.cross_entropy(model(x).float(), y)


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def reference(dtype: torch.dtype):
    import steepest
    from steepest.optim.base import LocalExecutor

    model = make_net(dtype)
    opt = steepest.Dion(matrices(model), lr=0.05, rank_fraction=RANK_FRACTION)
    opt.executor = LocalExecutor()
    grads = []
    for t in range(STEPS):
        opt.zero_grad()
        loss_of(model, t, dtype).backward()
        grads.append({n: p.grad.clone() for n, p in matrices(model)})
        opt.step()
    return model, grads, opt


def rel_diff(model: nn.Module, ref: nn.Module) -> float:
    worst = 0.0
    for (_, p), (_, q) in zip(matrices(model), matrices(ref)):
        p, q = full(p.detach()).double(), q.detach().double()
        worst = max(worst, float((p - q).abs().max() / q.abs().max()))
    return worst


def replicated_state(opt, local: bool = False) -> bool:
    """Whether this rank's optimizer state equals rank 0's (``local``: only ``Q``, the state every
    rank holds whole under FSDP2)."""
    tensors = [v.double().reshape(-1) for s in opt.state.values() for k, v in s.items() if isinstance(v, torch.Tensor) and (not local or k == "dion_Q")]
    mine = torch.cat(tensors)
    theirs = mine.clone()
    dist.broadcast(theirs, src=0)
    return bool(torch.equal(mine, theirs))


def worker(rank: int, world: int) -> dict:
    import steepest
    import steepest.distributed
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        ref, grads, ref_opt = reference(dtype)
        # DDP setting: replicated weights, the same gradients on every rank
        model = make_net(dtype)
        opt = steepest.Dion(matrices(model), lr=0.05, rank_fraction=RANK_FRACTION)
        for t in range(STEPS):
            opt.zero_grad()
            loss_of(model, t, dtype).backward()
            opt.step()
        momentum_diff = max(
            float((opt.state[p]["momentum_buffer"].double() - ref_opt.state[q]["momentum_buffer"].double()).abs().max()
                  / ref_opt.state[q]["momentum_buffer"].double().abs().max())
            for (_, p), (_, q) in zip(matrices(model), matrices(ref))
        )
        out["ddp", dtype] = {
            "setting": steepest.distributed.setting(opt),
            "work": dict(opt.executor.work),
            "diff": rel_diff(model, ref),
            "momentum_diff": momentum_diff,
            "replicated": replicated_state(opt),
            "keys": sorted({k for s in opt.state.values() for k in s}),
        }
        # FSDP2: row shards, the reference's gradients; whole matrices on owners, or the power
        # iteration on the row shards (small collectives, Dion.row_shard_direction)
        for strategy in ("all_to_all", "in_place"):
            model = make_net(dtype)
            for layer in [model.conv, model.inp, *model.up, model.down]:
                fully_shard(layer)
            fully_shard(model)
            opt = steepest.Dion(matrices(model), lr=0.05, rank_fraction=RANK_FRACTION)
            opt.executor = steepest.distributed.DistributedExecutor(row_shards=strategy)
            for t in range(STEPS):
                opt.zero_grad()
                for n, p in matrices(model):
                    g = grads[t][n]
                    chunk = -(-p.shape[0] // world)
                    start = min(rank * chunk, p.shape[0])
                    local = g[start : start + p.to_local().shape[0]].clone()
                    p.grad = DTensor.from_local(local, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
                opt.step()
            momentum_diff = max(
                float((full(opt.state[p]["momentum_buffer"]).double() - ref_opt.state[q]["momentum_buffer"].double()).abs().max()
                      / ref_opt.state[q]["momentum_buffer"].double().abs().max())
                for (_, p), (_, q) in zip(matrices(model), matrices(ref))
            )
            out["fsdp", strategy, dtype] = {
                "setting": steepest.distributed.setting(opt),
                "diff": rel_diff(model, ref),
                "momentum_diff": momentum_diff,
                "momentum_is_dtensor": all(hasattr(s["momentum_buffer"], "placements") for s in opt.state.values()),
                "work": dict(opt.executor.work),
                "rows": dict(opt.executor.rows),
                "replicated": replicated_state(opt, local=True),
            }
    out["rows_full_rank"] = full_rank_row_shards(rank, world)
    return out


FULL_RANK_SHAPES = [(256, 128)] * 3 + [(128, 256), (128, 64), (64, 32, 3, 3)]


def full_rank_row_shards(rank: int, world: int) -> dict:
    """Dion on row shards (small collectives) against one process, on full-rank gradients: every
    captured direction is well determined, so only rounding separates the two (max relative
    difference of the weights, the momenta and |Q| over 3 steps)."""
    import steepest
    import steepest.distributed
    from steepest.optim.base import LocalExecutor
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    gen = torch.Generator().manual_seed(7)
    W0 = [torch.randn(s, generator=gen) for s in FULL_RANK_SHAPES]
    G = [[torch.randn(s, generator=gen) for s in FULL_RANK_SHAPES] for _ in range(3)]
    ref = [nn.Parameter(w.clone()) for w in W0]
    ref_opt = steepest.Dion(ref, lr=0.05)
    ref_opt.executor = LocalExecutor()
    holder = nn.Module()
    holder.weights = nn.ParameterList([nn.Parameter(w.clone()) for w in W0])
    fully_shard(holder)
    params = list(holder.weights)
    opt = steepest.Dion(params, lr=0.05)
    opt.executor = steepest.distributed.DistributedExecutor(row_shards="in_place")
    worst = 0.0
    for step in G:
        for p, g in zip(ref, step):
            p.grad = g.clone()
        ref_opt.step()
        for p, g in zip(params, step):
            chunk = -(-g.shape[0] // world)
            start = min(rank * chunk, g.shape[0])
            local = g[start : start + p.to_local().shape[0]].clone()
            p.grad = DTensor.from_local(local, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
        opt.step()
        for p, q in zip(params, ref):
            pairs = [(p.detach().full_tensor(), q.detach()), (opt.state[p]["momentum_buffer"].full_tensor(), ref_opt.state[q]["momentum_buffer"]),
                     (opt.state[p]["dion_Q"].abs(), ref_opt.state[q]["dion_Q"].abs())]
            worst = max([worst] + [float((a - b).abs().max() / b.abs().max()) for a, b in pairs])
    return {"diff": worst, "work": dict(opt.executor.work), "rows": dict(opt.executor.rows)}


@pytest.fixture(scope="module")
def results():
    return spawn.run(worker, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ddp_matches_single_process(results, dtype):
    """bf16: weights and M are stored in bf16, so a float32 rounding difference could move one
    entry by a bf16 ulp; it does not happen here, but the bound allows 2^-8 relative."""
    tol = FACTORED_TOL if dtype == torch.float32 else 2**-8
    for rank, out in enumerate(results):
        r = out["ddp", dtype]
        assert r["setting"] == "ddp"
        assert r["diff"] <= tol, f"rank {rank}: {r['diff']}"
        assert r["momentum_diff"] <= tol, f"rank {rank}: momentum {r['momentum_diff']}"
        assert r["replicated"], f"rank {rank}'s Dion state differs from rank 0's"
        assert r["keys"] == ["dion_Q", "momentum_buffer", "step"]
    # the 3 (256, 128) matrices were split 2 + 1 (or 1 + 2) between the ranks, not computed twice
    counts = [out["ddp", torch.float32]["work"].get((256, 128), 0) for out in results]
    assert sorted(counts) == [STEPS * 1, STEPS * 2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("strategy", ["all_to_all", "in_place"])
def test_fsdp_matches_single_process(results, dtype, strategy):
    """All-to-all: as DDP (``FACTORED_TOL``; bf16: 2^-8). Row shards: ``BᵀP`` is summed over the ranks in
    another order and the TSQR picks its own orthonormal basis of the same span, a rounding-level
    change per product that the 4 steps' power iterations carry: 1e-5 (ten times the whole-matrix
    bar), and with bf16 weights and momenta one bf16 ulp, 2^-8. No whole matrix moves, and every
    rank holds the same ``Q``."""
    tol = (FACTORED_TOL if strategy == "all_to_all" else 1e-5) if dtype == torch.float32 else 2**-8
    for rank, out in enumerate(results):
        r = out["fsdp", strategy, dtype]
        assert r["setting"] == "fsdp"
        assert r["momentum_is_dtensor"]
        assert r["diff"] <= tol, f"rank {rank}: {r['diff']}"
        assert r["momentum_diff"] <= tol, f"rank {rank}: momentum {r['momentum_diff']}"
        assert r["replicated"], f"rank {rank}'s Q differs from rank 0's"
        if strategy == "in_place":
            assert r["work"] == {} and r["rows"], "the row path must not move whole matrices"
        else:
            assert r["work"] and not r["rows"]


def test_row_shards_match_single_process_on_full_rank_gradients(results):
    for rank, out in enumerate(results):
        r = out["rows_full_rank"]
        assert r["work"] == {} and r["rows"], "the row path must not move whole matrices"
        assert r["diff"] <= 1e-6, f"rank {rank}: {r['diff']}"

"""What each rank runs in the distributed tests (spawned by :mod:`.spawn`; imported by name)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

import steepest
import steepest.distributed
from steepest.execution import LowRank
from steepest.optim.base import LocalExecutor

from steepest.optim.modular import STEP_RULES

from ..registered import registered, registration

# Every registered matrix optimizer of ours (its class and fixed options), with options that make
# every code path run within a few steps on tiny matrices: a rate of at most 0.05, F*'s block path
# from rank 2 (its default goes dense on these sizes: "neon-fstar-dense" keeps that path).
LRS = {"muon": 0.02, "newton-muon": 0.02, "shampoo": 0.01, "sign": 0.01}
TEST_OPTIONS = {"newton-muon": dict(refresh_every=2), "shampoo": dict(update_every=2)}
FSTAR_BLOCK = dict(initial_rank=2, dense_fraction=1.0)


def _test_options(name: str) -> dict:
    r = registration(name)
    fstar = FSTAR_BLOCK if r.options.get("mode") == "fstar" else {}
    return {"lr": LRS.get(name, min(r.default_lr, 0.05)), **r.options, **fstar, **TEST_OPTIONS.get(name, {})}


OPTIMIZERS = {name: (registration(name).factory, _test_options(name)) for name in registered(matrix=True, peer=False)}
OPTIMIZERS["neon-fstar-dense"] = (steepest.Neon, dict(lr=0.05, mode="fstar"))
# cautious weight decay (every matrix optimizer's option) under DDP and FSDP2: its mask reads D and W
OPTIMIZERS["muon-cautious"] = (steepest.Muon, dict(lr=0.02, weight_decay=0.5, cautious_weight_decay=True))
OPTIMIZERS["normuon-cautious"] = (steepest.NorMuon, dict(lr=0.02, weight_decay=0.5, cautious_weight_decay=True))
STEPS = 4


class Net(nn.Module):
    """Hidden matrices in uneven same-shape batches (W = 2, 3): 5 × (8, 8), 3 × (12, 8), and one
    each of (4, 18) (a conv weight, 0 rows on rank 2 of 3 under FSDP), (8, 16), (8, 12), (3, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.inp = nn.Linear(16, 8)
        self.square = nn.ModuleList(nn.Linear(8, 8) for _ in range(5))
        self.up = nn.ModuleList(nn.Linear(8, 12) for _ in range(3))
        self.down = nn.Linear(12, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1)
        h = torch.relu(self.inp(h))
        for layer in self.square:
            h = h + torch.tanh(layer(h))
        h = h + self.down(sum(torch.tanh(layer(h)) for layer in self.up))
        return self.head(h)


def make_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same batch on every rank: the gradients are built identically everywhere."""
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(6, 2, 2, 2, generator=gen), torch.randint(0, 3, (6,), generator=gen)


def matrices(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.ndim >= 2]


def build(name: str, model: nn.Module, **extra):
    cls, options = OPTIMIZERS[name]
    options = {**options, **extra}
    if cls is steepest.NewtonMuon:
        options["model"] = model
    return cls(matrices(model), **options)


def loss_of(model: nn.Module, step: int) -> torch.Tensor:
    x, y = batch(step)
    return nn.functional.cross_entropy(model(x), y)


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def max_rel_diff(model: nn.Module, ref: nn.Module) -> float:
    worst = 0.0
    for (_, p), (_, q) in zip(matrices(model), matrices(ref)):
        p, q = full(p.detach()), q.detach()
        worst = max(worst, float((p - q).abs().max() / q.abs().max()))
    return worst


def reference_run(name: str, steps: int = STEPS) -> tuple[nn.Module, list[dict]]:
    """The single-process run: the same optimizer forced onto the local executor."""
    model = make_net()
    opt = build(name, model)
    opt.executor = LocalExecutor()
    grads = []
    for t in range(steps):
        opt.zero_grad()
        loss_of(model, t).backward()
        grads.append({n: p.grad.clone() for n, p in matrices(model)})
        opt.step()
    return model, grads


# --- DDP -------------------------------------------------------------------------------------
def ddp_parity(rank: int, world: int, names: list[str]) -> dict:
    """Each optimizer on replicated weights (the DDP setting; the same batch, so the same
    gradients, on every rank) against the local run: the worst relative weight difference, and
    the matrices whose direction each rank computed (counted by wrapping ``direction``)."""
    out = {}
    for name in names:
        ref, _ = reference_run(name)
        model = make_net()
        opt = build(name, model)
        computed = count_directions(opt)
        forms = record_forms(opt)
        for t in range(STEPS):
            opt.zero_grad()
            loss_of(model, t).backward()
            opt.step()
        out[name] = {
            "diff": max_rel_diff(model, ref),
            "computed": computed,
            "forms": sorted(forms),
            "setting": steepest.distributed.setting(opt),
            "work": dict(opt.executor.work),
            "state_equal": _state_is_replicated(opt),
        }
    return out


def bf16_factors(rank: int, world: int) -> dict:
    """The optimizers whose directions travel as float32 factors, on a bf16 model under DDP and
    FSDP2 (each rank adds the factors' product rounded once to bf16, as one process does), against
    the local run from the same gradients: the worst relative weight difference."""
    out = {}
    for name in FACTORED_NAMES:
        runs, grads = {}, []
        for setting in ("local", "ddp", "fsdp"):
            model = make_net().to(torch.bfloat16)
            if setting == "fsdp":
                model = shard(model)
            opt = build(name, model)
            if setting == "local":
                opt.executor = LocalExecutor()
            for t in range(STEPS):
                opt.zero_grad()
                x, y = batch(t)
                nn.functional.cross_entropy(model(x.to(torch.bfloat16)).float(), y).backward()
                if setting == "local":
                    grads.append({n: p.grad.clone() for n, p in matrices(model)})
                elif setting == "fsdp":  # FSDP2 reduces bf16 gradients in its own order: the local run's instead
                    set_sharded_grads(model, grads[t])
                opt.step()
            runs[setting] = [full(p.detach()).float() for _, p in matrices(model)]
        for setting in ("ddp", "fsdp"):
            out[f"{name}/{setting}"] = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(runs[setting], runs["local"]))
    return out


def rank0_checkpoint(rank: int, world: int, path: str) -> dict:
    """The harness's checkpoints under DDP: rank 0 alone ``torch.save``s ``opt.state_dict()``,
    every rank loads it into a fresh optimizer and continues; equal to the uninterrupted run."""
    out = {}
    for name in ["neon-fstar", "shampoo", "newton-muon"]:
        straight = make_net()
        opt = build(name, straight)
        for t in range(4):
            opt.zero_grad()
            loss_of(straight, t).backward()
            opt.step()
        model = make_net()
        opt = build(name, model)
        for t in range(2):
            opt.zero_grad()
            loss_of(model, t).backward()
            opt.step()
        if rank == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, f"{path}-{name}")
        dist.barrier()
        ckpt = torch.load(f"{path}-{name}", weights_only=True)
        model = make_net()
        opt = build(name, model)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        for t in range(2, 4):
            opt.zero_grad()
            loss_of(model, t).backward()
            opt.step()
        out[name] = max_rel_diff(model, straight)
    return out


def count_directions(opt) -> list:
    """Wrap ``opt.direction`` to record ``(shape, matrices)`` of every call on this rank."""
    computed = []
    original = opt.direction

    def direction(group, bucket):
        computed.append((bucket.shape, len(bucket.momenta)))
        return original(group, bucket)

    opt.direction = direction
    return computed


def record_forms(opt) -> set:
    """Wrap the executor's ``directions`` to record, per batch, whether the optimizer announced
    factors (``direction_factors``) and whether the executor returned factors (``LowRank``)."""
    forms = set()
    executor = opt.executor
    original = executor.directions

    def directions(optimizer, group, buckets):
        out = original(optimizer, group, buckets)
        for bucket, D in zip(buckets, out):
            forms.add((optimizer.direction_factors(group, bucket) is not None, isinstance(D, LowRank)))
        return out

    executor.directions = directions
    return forms


def ddp_training(rank: int, world: int) -> dict:
    """The harness's setup: build_optimizer (Muon + AdamW) on the model, then DDP, each rank its
    own batch; every rank ends with the same weights and state, equal to one process stepping
    on the mean gradient (W = 2: the mean of DDP's all-reduce is exact)."""
    model = make_net()
    opt = steepest.build_optimizer(model, "muon", lr=0.02, head=[model.head.weight])
    ddp = nn.parallel.DistributedDataParallel(model)
    ref = make_net()
    ref_opt = steepest.build_optimizer(ref, "muon", lr=0.02, head=[ref.head.weight])
    ref_opt.optimizers[0].executor = LocalExecutor()
    for t in range(3):
        opt.zero_grad()
        loss_of(ddp, world * t + rank).backward()
        opt.step()
        ref_opt.zero_grad()
        sum(loss_of(ref, world * t + r) for r in range(world)).div(world).backward()
        ref_opt.step()
    return {"diff": max_rel_diff(model, ref), "setting": steepest.distributed.setting(opt.optimizers[0]),
            "state_equal": _state_is_replicated(opt.optimizers[0])}


def _state_is_replicated(opt) -> bool:
    """Every rank holds the same optimizer state (what a rank-0 ``state_dict()`` relies on)."""
    tensors = [v.float().reshape(-1) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    mine = torch.cat(tensors)
    theirs = mine.clone()
    dist.broadcast(theirs, src=0)
    return bool(torch.equal(mine, theirs))


def none_gradient(rank: int, world: int) -> dict:
    """Rank 1 drops one gradient (never the others) and every rank drops another: no hang, the
    weights stay identical across ranks, and the parameter without any gradient does not move."""
    model = make_net()
    opt = steepest.Muon(matrices(model), lr=0.02)
    for t in range(3):
        opt.zero_grad()
        loss_of(model, t).backward()
        model.head.weight.grad = None  # on every rank: skipped, as in one process
        if rank == 1:
            model.square[0].weight.grad = None  # on one rank: counts as zero there
        before = model.head.weight.detach().clone()
        opt.step()
        assert torch.equal(before, model.head.weight.detach())
    weights = torch.cat([p.detach().reshape(-1) for _, p in matrices(model)])
    rank0 = weights.clone()
    dist.broadcast(rank0, src=0)
    return {"identical": bool(torch.equal(weights, rank0)), "head_state": model.head.weight in opt.state}


def mismatched_options(rank: int, world: int) -> str:
    """Rank 1 builds Muon with another ns_steps: every rank raises OptionsMismatchError."""
    model = make_net()
    opt = steepest.Muon(matrices(model), lr=0.02, ns_steps=5 if rank == 0 else 4)
    loss_of(model, 0).backward()
    try:
        opt.step()
    except steepest.distributed.OptionsMismatchError as e:
        return str(e)
    return "no error"


def mismatched_model(rank: int, world: int) -> str:
    """Rank 1 has one matrix fewer: a clear error, not a hang in a mismatched collective."""
    model = make_net()
    params = matrices(model)[: -1 if rank == 1 else None]
    opt = steepest.Neon(params, lr=0.02)
    loss_of(model, 0).backward()
    try:
        opt.step()
    except steepest.distributed.OptionsMismatchError as e:
        return str(e)
    return "no error"


# --- FSDP2 -----------------------------------------------------------------------------------
def shard(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    return fully_shard(model)


def set_sharded_grads(model: nn.Module, grads: dict[str, torch.Tensor]) -> None:
    """The reference run's gradients, as this rank's row shards (exactly the same numbers), for
    the parameters that ``grads`` names."""
    from torch.distributed.tensor import DTensor

    for n, p in model.named_parameters():
        if n not in grads:
            continue
        g = grads[n]
        local = p.to_local()
        rows = local.shape[0]
        start = min(rank_rows_start(p), g.shape[0])
        p.grad = DTensor.from_local(g[start : start + rows].clone(), p.device_mesh, p.placements, shape=p.shape, stride=p.stride())


def rank_rows_start(p) -> int:
    chunk = -(-p.shape[0] // p.device_mesh.size())
    return p.device_mesh.get_local_rank() * chunk


def fsdp_parity(rank: int, world: int, names: list[str], row_shards: str = "auto") -> dict:
    """Each optimizer on a fully_shard model against the local run, from the same gradients."""
    out = {}
    for name in names:
        ref, grads = reference_run(name)
        model = shard(make_net())
        opt = build(name, model)
        opt.executor = steepest.distributed.DistributedExecutor(row_shards=row_shards)
        computed = count_directions(opt)
        forms = record_forms(opt)
        for t in range(STEPS):
            opt.zero_grad()
            loss_of(model, t).backward()  # FSDP2 runs its hooks; Newton-Muon sees the inputs
            set_sharded_grads(model, grads[t])
            opt.step()
        out[name] = {
            "diff": max_rel_diff(model, ref),
            "computed": computed,
            "forms": sorted(forms),
            "rows": dict(opt.executor.rows),
            "momentum_is_dtensor": all(hasattr(s["momentum_buffer"], "placements") for s in opt.state.values()),
        }
    return out


def _parts(opt) -> list:
    return list(getattr(opt, "optimizers", [opt]))


def every_layer_normed(rank: int, world: int) -> dict:
    """``build_optimizer(model, name, step=rule)`` for the modular optimizers (every parameter,
    conv, head and 1-D biases included; ``step="dual"`` couples them all through one global inner
    product, summed over the row shards under FSDP2) under DDP and FSDP2, against the local run
    from the same gradients: the worst relative difference over all parameters."""
    out = {}
    for name in [n for n in registered(peer=False) if registration(n).roles]:
        for rule in STEP_RULES:
            ref = make_net()
            ref_opt = steepest.build_optimizer(ref, name, step=rule)
            for part in _parts(ref_opt):
                part.executor = LocalExecutor()
            grads = []
            for t in range(STEPS):
                ref_opt.zero_grad()
                loss_of(ref, t).backward()
                grads.append({n: p.grad.clone() for n, p in ref.named_parameters()})
                ref_opt.step()
            for setting in ("ddp", "fsdp"):
                model = make_net() if setting == "ddp" else shard(make_net())
                opt = steepest.build_optimizer(model, name, step=rule)
                for t in range(STEPS):
                    opt.zero_grad()
                    loss_of(model, t).backward()
                    if setting == "fsdp":
                        set_sharded_grads(model, grads[t])
                    opt.step()
                diff = max(
                    float((full(p.detach()) - q.detach()).abs().max() / q.detach().abs().max())
                    for p, q in zip(model.parameters(), ref.parameters())
                )
                kinds = sorted({steepest.distributed.setting(part) for part in _parts(opt)})
                out[f"{name}/{rule}/{setting}"] = {"diff": diff, "settings": kinds, "one_optimizer": len(_parts(opt)) == 1}
    return out


# --- DCP checkpoints -------------------------------------------------------------------------
CHECKPOINTED = registered(matrix=True, peer=False)
FULL_OPTIONS = {"neon-fstar": dict(initial_rank=1, dense_fraction=1.0), "newton-muon": dict(refresh_every=2), "shampoo": dict(update_every=2)}


def train_full(name: str, setting: str, start: int, steps: int, load_from: str | None = None, save_to: str | None = None) -> list[torch.Tensor]:
    """``build_optimizer(model, name)`` (matrix optimizer + AdamW) in ``setting`` ("local", "ddp" or
    "fsdp"), optionally resumed from and saved to a DCP checkpoint; the same batches on every
    rank. Returns the full weights."""
    model = make_net()
    if setting == "fsdp":
        shard(model)
    opt = steepest.build_optimizer(model, name, head=[model.head.weight], **FULL_OPTIONS.get(name, {}))
    if load_from is not None:
        steepest.distributed.load(load_from, model, opt)
    for t in range(start, start + steps):
        opt.zero_grad()
        loss_of(model, t).backward()
        opt.step()
    if save_to is not None:
        steepest.distributed.save(save_to, model, opt)
    return [full(p.detach()).clone() for p in model.parameters()]


def dcp_one_process(rank: int, world: int, directory: str) -> dict:
    """World size 1: the uninterrupted runs (6 steps), and 3 steps saved for the 2-rank runs (Neon
    F*'s rank, so its basis width, differs from the template's: :func:`load` refits it)."""
    out = {}
    for name in CHECKPOINTED:
        out[name] = train_full(name, "local", 0, 6)
        train_full(name, "local", 0, 3, save_to=f"{directory}/one-{name}")
    return out


def dcp_two_processes(rank: int, world: int, directory: str) -> dict:
    """World size 2: resume the 1-rank checkpoints under DDP and FSDP2 (1 → 2), and save 3-step
    checkpoints from DDP and FSDP2 runs for the 2 → 1 resumption."""
    out = {}
    for name in CHECKPOINTED:
        for setting in ("ddp", "fsdp"):
            out[name, setting] = train_full(name, setting, 3, 3, load_from=f"{directory}/one-{name}")
            train_full(name, setting, 0, 3, save_to=f"{directory}/{setting}-{name}")
    return out


# --- one spawn per world size runs every scenario --------------------------------------------
MATRIX_NAMES = list(OPTIMIZERS)
FACTORED_NAMES = [n for n in MATRIX_NAMES if OPTIMIZERS[n][0] is steepest.Dion or OPTIMIZERS[n][1].get("mode") == "nuclear"]
NEON_NAMES = [n for n in registered(matrix=True, peer=False) if registration(n).factory is steepest.Neon]  # its Krylov path, error feedback included


def scenarios(rank: int, world: int, checkpoint_path: str) -> dict:
    out = {
        "ddp": ddp_parity(rank, world, MATRIX_NAMES),
        "fsdp": fsdp_parity(rank, world, MATRIX_NAMES, "all_to_all"),
        "fsdp_krylov": fsdp_parity(rank, world, NEON_NAMES, "in_place"),
        "none_gradient": none_gradient(rank, world),
        "every_layer_normed": every_layer_normed(rank, world),
        "bf16_factors": bf16_factors(rank, world),
    }
    if world == 2:
        out["ddp_training"] = ddp_training(rank, world)
        out["rank0_checkpoint"] = rank0_checkpoint(rank, world, checkpoint_path)
        out["mismatched_options"] = mismatched_options(rank, world)
        out["mismatched_model"] = mismatched_model(rank, world)
    return out


def world_of_one(rank: int, world: int) -> dict:
    """A process group of one rank: the local executor, the same numbers as no group at all."""
    model = make_net()
    opt = build("neon-fstar", model)
    for t in range(2):
        opt.zero_grad()
        loss_of(model, t).backward()
        opt.step()
    ref, _ = reference_run("neon-fstar", steps=2)
    return {"setting": steepest.distributed.setting(opt), "executor": type(opt.executor).__name__, "diff": max_rel_diff(model, ref)}

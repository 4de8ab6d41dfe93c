"""Distributed optimizer step on the GPT-2-small matrix set: how the direction work splits.

The matrices are GPT-2 small's hidden weights, 12 layers × {4 × 768×768, 3072×768, 768×3072}
(72 matrices, 85M entries). Every rank holds the same gradients (seeded), as after DDP's
all-reduce, and the optimizer steps them under 1, 2 and 4 processes; per world size it prints

* ``direction``: seconds per step this rank spent in ``optimizer.direction`` (its share), wall
  clock and this process's CPU time (which a machine with fewer free cores than processes
  inflates less),
* ``comm``: seconds per step spent in collectives and waiting on them (what the overlap hid is
  not counted),
* ``step``: seconds per ``optimizer.step()``, and against the 1-process step the speed-up and the
  fraction of the ideal ``W×``.

CPU: gloo, one thread per process (so that W processes use W cores, not a shared pool). GPU:
NCCL, one GPU per rank (``--device cuda`` with at least W GPUs). Under ``torchrun`` the script
measures the launched world only::

    python benchmarks/distributed.py --optimizer muon --worlds 1 2 4
    python benchmarks/distributed.py --optimizer neon-nuclear --setting fsdp --row-shards in_place
    python benchmarks/distributed.py --optimizer dion --setting fsdp --row-shards in_place
    torchrun --nproc-per-node 8 benchmarks/distributed.py --device cuda --optimizer muon
    python benchmarks/distributed.py --simulate 8 --device cuda   # one GPU: one rank's share
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import steepest  # noqa: E402
import steepest.distributed  # noqa: E402
from steepest.distributed.partition import assign, direction_flops  # noqa: E402
from steepest.optim.base import LocalExecutor  # noqa: E402

OPTIMIZERS = {
    "muon": (steepest.Muon, {}),
    "neon-nuclear": (steepest.Neon, {"mode": "nuclear"}),
    "neon-fstar": (steepest.Neon, {"mode": "fstar"}),
    "shampoo": (steepest.Shampoo, {"update_every": 10}),
    "sign": (steepest.SignDescent, {}),
    "dion": (steepest.Dion, {}),
}


class Matrices(nn.Module):
    """One bias-free Linear per hidden matrix of GPT-2 small (q, k, v, o, fc, proj per layer).
    Only the optimizer runs: the gradients are set directly."""

    def __init__(self, layers: int, width: int = 768) -> None:
        super().__init__()
        shapes = [(width, width)] * 4 + [(4 * width, width), (width, 4 * width)]
        self.linears = nn.ModuleList(nn.Linear(i, o, bias=False) for _ in range(layers) for o, i in shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # fully_shard needs one
        raise NotImplementedError


def gpt2_matrices(layers: int, width: int = 768) -> nn.Module:
    return Matrices(layers, width)


def set_gradients(model: nn.Module, step: int) -> None:
    """The same gradients on every rank (row shards of them under FSDP2)."""
    gen = torch.Generator().manual_seed(step)
    for p in model.parameters():
        g = torch.randn(p.shape, generator=gen).mul_(1e-2).to(p.device)
        if hasattr(p, "placements"):
            from torch.distributed.tensor import DTensor

            chunk = -(-p.shape[0] // p.device_mesh.size())
            start = min(p.device_mesh.get_local_rank() * chunk, p.shape[0])
            g = DTensor.from_local(g[start : start + p.to_local().shape[0]].contiguous(), p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
        p.grad = g


class Clock:
    """Seconds spent in ``direction`` and in collectives (including waits on async ones)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.direction, self.direction_cpu, self.comm = device, 0.0, 0.0, 0.0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap_direction(self, opt) -> None:
        original = opt.direction

        def direction(group, bucket):
            self.sync()
            t, c = time.perf_counter(), time.process_time()
            out = original(group, bucket)
            self.sync()
            self.direction += time.perf_counter() - t
            self.direction_cpu += time.process_time() - c
            return out

        opt.direction = direction

    def wrap_row_shards(self) -> None:
        """The in-place row-shard path computes the directions itself: its compute is its time
        less the collectives inside it."""
        from steepest.distributed.rowshards import RowShardBatch

        original, clock = RowShardBatch.compute, self

        def compute(batch):
            comm, t, c = clock.comm, time.perf_counter(), time.process_time()
            original(batch)
            clock.sync()
            clock.direction += time.perf_counter() - t - (clock.comm - comm)
            clock.direction_cpu += time.process_time() - c  # includes the collectives' own CPU work

        RowShardBatch.compute = compute

    def wrap_collectives(self) -> None:
        clock = self

        class TimedWork:
            def __init__(self, work):
                self.work = work

            def wait(self, *a, **k):
                t = time.perf_counter()
                out = self.work.wait(*a, **k)
                clock.sync()
                clock.comm += time.perf_counter() - t
                return out

        def timed(fn):
            def wrapper(*a, async_op: bool = False, **k):
                t = time.perf_counter()
                work = fn(*a, async_op=async_op, **k)
                if async_op:
                    clock.comm += time.perf_counter() - t
                    return TimedWork(work)
                clock.sync()
                clock.comm += time.perf_counter() - t
                return work

            return wrapper

        for name in ("all_gather_into_tensor", "all_to_all_single", "all_reduce"):
            setattr(dist, name, timed(getattr(dist, name)))


def measure(rank: int, world: int, args) -> dict:
    """Time ``args.steps`` optimizer steps on this rank (after ``args.warmup``)."""
    device = torch.device(args.device, rank % max(1, torch.cuda.device_count())) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = gpt2_matrices(args.layers, args.width).to(device)
    if world > 1 and args.setting == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)
    cls, options = OPTIMIZERS[args.optimizer]
    opt = cls(list(model.parameters()), lr=1e-3, nonfinite="skip", **options)
    if world > 1:
        opt.executor = steepest.distributed.DistributedExecutor(row_shards=args.row_shards)
    else:
        opt.executor = LocalExecutor()
    clock = Clock(device)
    clock.wrap_direction(opt)
    clock.wrap_row_shards()
    clock.wrap_collectives()
    steps, directions, cpus, comms = [], [], [], []
    for t in range(args.warmup + args.steps):
        set_gradients(model, t)
        clock.direction = clock.direction_cpu = clock.comm = 0.0
        if world > 1:
            dist.barrier()
        clock.sync()
        start = time.perf_counter()
        opt.step()
        clock.sync()
        if t >= args.warmup:
            steps.append(time.perf_counter() - start)
            directions.append(clock.direction)
            cpus.append(clock.direction_cpu)
            comms.append(clock.comm)
    median = statistics.median
    return {"step": median(steps), "direction": median(directions), "direction_cpu": median(cpus), "comm": median(comms)}


def _worker(rank: int, world: int, args, init_file: str, queue) -> None:
    torch.set_num_threads(args.threads)
    if world > 1:
        backend = "nccl" if args.device == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=datetime.timedelta(minutes=10))
    try:
        queue.put((rank, measure(rank, world, args)))
    except BaseException as e:
        queue.put((rank, e))
        raise
    finally:
        if world > 1:
            dist.destroy_process_group()


def spawn(world: int, args) -> list[dict]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init_file = os.path.join(tempfile.mkdtemp(), "pg")
    procs = [ctx.Process(target=_worker, args=(r, world, args, init_file, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(queue.get() for _ in procs)
    for p in procs:
        p.join()
    errors = [f"rank {r}: {v!r}" for r, v in sorted(results.items()) if isinstance(v, BaseException)]
    if errors:
        raise RuntimeError("benchmark worker failed: " + "; ".join(errors))
    return [results[r] for r in range(world)]


def simulate(args) -> None:
    """One device: time each rank's share of a ``W``-way split (the critical path is the largest
    share) against the whole step's directions, and print the bytes each rank would all-gather."""
    world = args.simulate
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = gpt2_matrices(args.layers, args.width).to(device)
    cls, options = OPTIMIZERS[args.optimizer]
    opt = cls(list(model.parameters()), lr=1e-3, nonfinite="skip", **options)
    opt.executor = LocalExecutor()
    clock = Clock(device)
    for t in range(args.warmup):
        set_gradients(model, t)
        opt.step()
    group = opt.param_groups[0]
    buckets = {}
    for p in group["params"]:
        buckets.setdefault(opt.matrix_shape(p), []).append(p)
    shapes = list(buckets)
    plans = assign([(len(buckets[s]), direction_flops(opt, group, s)) for s in shapes], world)
    M = {s: torch.stack([opt.state[p]["momentum_buffer"] for p in buckets[s]]) for s in shapes}
    from steepest.optim.base import Bucket

    def time_share(rank: int | None) -> float:
        total = 0.0
        for s, plan in zip(shapes, plans):
            idx = range(len(buckets[s])) if rank is None else plan.owned(rank)
            if not len(idx):
                continue
            ps = [buckets[s][i] for i in idx]
            b = Bucket(s, ps, [p.grad for p in ps], list(M[s][list(idx)].unbind(0)), [opt.state[p] for p in ps], [""] * len(ps))
            opt.prepare_directions(group, b)
            clock.sync()
            t = time.perf_counter()
            opt.direction(group, b)
            clock.sync()
            total += time.perf_counter() - t
        return total

    whole, shares = float("inf"), [float("inf")] * world
    for _ in range(args.steps):  # interleaved, best of each: a shared machine's noise hits all alike
        whole = min(whole, time_share(None))
        shares = [min(t, time_share(r)) for r, t in enumerate(shares)]
    gathered = sum(len(buckets[s]) * s[0] * s[1] for s in shapes) * next(model.parameters()).element_size()
    print(f"{args.optimizer} on {args.layers} layers of width {args.width}, {device}: all directions {whole * 1e3:.1f} ms; "
          f"largest of {world} shares {max(shares) * 1e3:.1f} ms (compute speed-up {whole / max(shares):.2f}x, "
          f"ideal {world}x); each rank receives {gathered * (world - 1) / world / 1e6:.0f} MB per step")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--optimizer", choices=list(OPTIMIZERS), default="muon")
    ap.add_argument("--setting", choices=["ddp", "fsdp"], default="ddp")
    ap.add_argument("--row-shards", choices=["auto", "in_place", "all_to_all"], default="auto",
                    help="FSDP2 row shards: the optimizer's in-place path (Neon, Dion) or whole matrices")
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768, help="model width d: matrices d×d, 4d×d, d×4d")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--simulate", type=int, default=0, metavar="W", help="one process: time one rank's share of a W-way split")
    args = ap.parse_args(argv)
    if args.simulate:
        simulate(args)
        return
    if "WORLD_SIZE" in os.environ:  # under torchrun: this world only
        backend = "nccl" if args.device == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
        torch.set_num_threads(args.threads)
        rank, world = dist.get_rank(), dist.get_world_size()
        out = measure(int(os.environ.get("LOCAL_RANK", rank)) if args.device == "cuda" else rank, world, args)
        everyone = [None] * world
        dist.all_gather_object(everyone, out)
        if rank == 0:
            report({world: everyone}, args)
        dist.destroy_process_group()
        return
    report({w: spawn(w, args) for w in args.worlds}, args)


def report(results: dict[int, list[dict]], args) -> None:
    base = results.get(1, [None])[0]
    print(f"\n{args.optimizer}, {args.setting}{'' if args.setting == 'ddp' else f' (row shards: {args.row_shards})'}, "
          f"GPT-2-small matrices (d = {args.width}) × {args.layers} layers, {args.device}, median of {args.steps} steps")
    print("| processes | direction s (per rank) | direction CPU s (per rank) | comm s (per rank) | step s | speed-up | of ideal |")
    print("|---|---|---|---|---|---|---|")
    for world, ranks in sorted(results.items()):
        step = max(r["step"] for r in ranks)
        d = " / ".join(f"{r['direction']:.3f}" for r in ranks)
        cpu = " / ".join(f"{r['direction_cpu']:.3f}" for r in ranks)
        c = " / ".join(f"{r['comm']:.3f}" for r in ranks)
        speed = f"{base['step'] / step:.2f}x" if base else "-"
        ideal = f"{base['step'] / step / world:.0%}" if base else "-"
        print(f"| {world} | {d} | {cpu} | {c} | {step:.3f} | {speed} | {ideal} |")


if __name__ == "__main__":
    main()

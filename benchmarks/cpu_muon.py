"""Muon on a CPU, side by side with its peers and the matmul floors, in one interleaved run.

    python benchmarks/cpu_muon.py                 # 2 GPT-2-small layers (12 matrices), 2 threads
    python benchmarks/cpu_muon.py --smoke         # width 64, 2 rounds: checks that it runs

The matrices are the hidden weights of ``--layers`` GPT-2-small layers (per layer 4 × d², 4d×d,
d×4d; d = ``--width``, 768), float32, with fixed gradients in place. Every row is timed once per
round, the rows in turn (so that a busy machine slows them alike), for ``--rounds`` rounds after
two warm-up calls; the table gives the median ms per ``step()``:

* ``steepest.Muon`` default (its iteration dtype chosen by the CPU: bf16 with AMX or AVX512-BF16,
  float32 otherwise), and with ``msgn_dtype`` forced to bf16 and to float32;
* the peers: ``torch.optim.Muon`` (Newton–Schulz in bf16, one matrix at a time) and
  ``pytorch_optimizer.Muon`` when installed (``pip install -e ".[peers]"``);
* the floors: the 5 quintic steps' three products per matrix (``XXᵀ``, ``A·A``, ``B·X`` with ``X``
  of shape min×max), one 2-D product per matrix into preallocated outputs (as our CPU Muon runs
  them), in bf16 and in float32: matmul time alone, no normalisation, momentum, update or
  allocation;
* ``steepest.Neon`` nuclear and ``torch.optim.AdamW(fused=True)`` for scale.

A row whose first call takes longer than ``--row-limit`` seconds (bf16 rows on a CPU that emulates
bf16: ``torch.optim.Muon`` at width 768 takes minutes per step there) is timed by one more call
instead of every round, and marked. The header names the CPU (model name, AVX2 / AVX512-BF16 /
AMX flags from ``/proc/cpuinfo`` and torch's probes): the ranking depends on it (see
docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from common import cpu_description

import steepest
from steepest.directions.msgn import default_iteration_dtype


def layer_shapes(width: int, layers: int) -> list[tuple[int, int]]:
    return layers * ([(width, width)] * 4 + [(4 * width, width), (width, 4 * width)])


def make_params(shapes: list[tuple[int, int]], seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen) * shape[1] ** -0.5)
        p.grad = torch.randn(shape, generator=gen) * 1e-3
        params.append(p)
    return params


def floor_fn(shapes: list[tuple[int, int]], dtype: torch.dtype, steps: int = 5) -> Callable[[], None]:
    """The products of ``steps`` quintic steps (``XXᵀ``, ``A·A``, ``A·X``, X of shape min × max),
    one 2-D product per matrix as our CPU Muon runs them, written into preallocated outputs: matmul
    time alone, no allocation (a fresh output is paged in again on every call)."""
    gen = torch.Generator().manual_seed(1)
    mats = []
    for m, n in shapes:
        m, n = min(m, n), max(m, n)
        X = (torch.randn(m, n, generator=gen) / n**0.5).to(dtype)
        A = (torch.randn(m, m, generator=gen) / m**0.5).to(dtype)
        mats.append((X, A, torch.empty_like(A), torch.empty_like(A), torch.empty_like(X)))

    def run() -> None:
        for _ in range(steps):
            for X, A, gram, square, product in mats:
                torch.mm(X, X.mT, out=gram)
                torch.mm(A, A, out=square)
                torch.mm(A, X, out=product)

    return run


def rows(shapes: list[tuple[int, int]], include: set[str] | None) -> dict[str, tuple[Callable[[], None], str]]:
    """name → (one timed call, note)."""
    def opt(factory: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]) -> Callable[[], None]:
        return factory(make_params(shapes)).step

    native = default_iteration_dtype("cpu")
    out: dict[str, tuple[Callable[[], None], str]] = {
        "steepest.Muon default": (opt(lambda ps: steepest.Muon(ps, lr=0.02)), f"Polar Express, {str(native).replace('torch.', '')} (chosen by the CPU)"),
        "steepest.Muon bf16": (opt(lambda ps: steepest.Muon(ps, lr=0.02, msgn_dtype=torch.bfloat16)), "Polar Express, msgn_dtype=bfloat16"),
        "steepest.Muon float32": (opt(lambda ps: steepest.Muon(ps, lr=0.02, msgn_dtype=torch.float32)), "Polar Express, msgn_dtype=float32"),
    }
    if hasattr(torch.optim, "Muon"):
        out["torch.optim.Muon"] = (opt(lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.0)), "Newton–Schulz, bf16, one matrix at a time")
    try:
        from pytorch_optimizer import Muon as PtoMuon

        out["pytorch_optimizer.Muon"] = (opt(lambda ps: PtoMuon([dict(params=ps, use_muon=True)], lr=0.02)), "Newton–Schulz (its defaults)")
    except ImportError:
        pass
    out["matmul floor bf16"] = (floor_fn(shapes, torch.bfloat16), "5 steps' products, 2-D, preallocated outputs")
    out["matmul floor float32"] = (floor_fn(shapes, torch.float32), "5 steps' products, 2-D, preallocated outputs")
    out["steepest.Neon nuclear"] = (opt(lambda ps: steepest.Neon(ps, lr=0.05, mode="nuclear")), "rank-1 block power iteration")
    out["torch.optim.AdamW(fused=True)"] = (opt(lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)), "one fused pass")
    if include:
        out = {k: v for k, v in out.items() if k in include}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="timed calls per row, interleaved")
    parser.add_argument("--budget", type=float, default=900.0, help="seconds for all rounds; at least 3 rounds run")
    parser.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    parser.add_argument("--row-limit", type=float, default=30.0, help="a row whose first call takes longer is timed once more, not every round")
    parser.add_argument("--smoke", action="store_true", help="width 64, 2 rounds: checks that the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.width, args.rounds = 64, 2
    torch.set_num_threads(args.threads)
    shapes = layer_shapes(args.width, args.layers)
    include = {r.strip() for r in args.rows.split(",") if r.strip()} or None
    table = rows(shapes, include)

    times: dict[str, list[float]] = {name: [] for name in table}
    slow: set[str] = set()
    for name, (fn, _) in table.items():  # warm-up: state creation, first-call costs
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        if first > args.row_limit:  # e.g. bf16 rows on a CPU that emulates bf16: one more call, not repeated
            slow.add(name)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        else:
            fn()
    start = time.perf_counter()
    for r in range(args.rounds):
        for name, (fn, _) in table.items():
            if name in slow:
                continue
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - start > args.budget:
            break
    ms = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}

    print(f"## Muon step on CPU: {args.layers} GPT-2-small layers at width {args.width} ({len(shapes)} matrices), {args.threads} threads\n")
    print(cpu_description())
    rounds = max(len(ts) for name, ts in times.items() if name not in slow) if len(slow) < len(times) else 0
    print(f"torch {torch.__version__}; {rounds} interleaved rounds, median ms per call\n")
    floor = ms.get("matmul floor bf16") if default_iteration_dtype("cpu") == torch.bfloat16 else ms.get("matmul floor float32")
    adamw = ms.get("torch.optim.AdamW(fused=True)")
    print("| row | ms/step | × default's floor | × fused AdamW | notes |")
    print("|---|---|---|---|---|")
    for name, (_, note) in table.items():
        over_floor = f"{ms[name] / floor:.2f}" if floor else "–"
        over_adamw = f"{ms[name] / adamw:.1f}" if adamw else "–"
        note = note + ("; one call (the first took > --row-limit s)" if name in slow else "")
        print(f"| {name} | {ms[name]:.1f} | {over_floor} | {over_adamw} | {note} |")
    peers = {k: ms[k] for k in ("torch.optim.Muon", "pytorch_optimizer.Muon") if k in ms}
    if "steepest.Muon default" in ms:
        ours = ms["steepest.Muon default"]
        parts = []
        if peers:
            best = min(peers, key=peers.get)
            parts.append(f"fastest peer Muon ({best}) / our default: {peers[best] / ours:.2f}×")
        if floor:
            parts.append(f"our default / its matmul floor: {ours / floor:.2f}×")
        if "steepest.Neon nuclear" in ms and adamw:
            parts.append(f"Neon nuclear / fused AdamW: {ms['steepest.Neon nuclear'] / adamw:.2f}×")
        print("\nRatios (same run): " + "; ".join(parts))


if __name__ == "__main__":
    main()

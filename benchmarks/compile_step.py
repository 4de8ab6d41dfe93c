"""``torch.compile`` of an optimizer step: graphs, graph breaks, compile time and step time.

For each optimizer, on three float32 matrices (256×128, 256×128, 128×256) with a tensor lr (a
float lr is a constant that recompiles when a scheduler changes it)::

    @torch.compile
    def step():
        opt.step()

and ``nonfinite="skip"`` (``"raise"`` reads one flag back per step by design: ``--nonfinite raise``),
it reports what ``torch._dynamo.explain`` finds (graphs and graph breaks, with the first break's
reason), the wall time of the first compiled call (compilation included), and the median time of
a compiled and of an eager step. Each optimizer runs in its own subprocess (fresh Dynamo caches).
Usage::

    python benchmarks/compile_step.py [--optimizers muon,adamw] [--device cuda]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time

import torch

DEFAULT = ["adamw", "muon", "normuon", "neon-nuclear", "neon-fstar", "dion", "shampoo", "sign", "modular"]
SHAPES = [(256, 128), (256, 128), (128, 256)]


def _median_ms(fn, device: torch.device, repeats: int = 10) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def measure(name: str, device: torch.device, nonfinite: str) -> dict:
    import torch._dynamo

    import steepest.bench  # noqa: F401  (registers the peers)
    from steepest.optim.registry import registration

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s, device=device) * 0.02) for s in SHAPES]
    r = registration(name)
    kw = {"nonfinite": nonfinite} if "nonfinite" in inspect.signature(r.factory).parameters else {}
    opt = r.build([(f"w{i}", p) for i, p in enumerate(params)], lr=torch.tensor(r.default_lr, device=device), **kw)
    for p in params:
        p.grad = torch.randn_like(p)

    def step() -> None:
        opt.step()

    step()  # the state exists before tracing, as after a first eager step
    explained = torch._dynamo.explain(step)()
    torch._dynamo.reset()
    compiled = torch.compile(step)
    t0 = time.perf_counter()
    compiled()
    compile_s = time.perf_counter() - t0
    reasons = [str(getattr(b, "reason", b)).splitlines()[0][:120] for b in explained.break_reasons]
    return {
        "optimizer": name,
        "graphs": explained.graph_count,
        "breaks": explained.graph_break_count,
        "first_break": reasons[0] if reasons else "",
        "compile_s": compile_s,
        "compiled_ms": _median_ms(compiled, device),
        "eager_ms": _median_ms(step, device),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizers", default=",".join(DEFAULT))
    p.add_argument("--device", default="cpu")
    p.add_argument("--nonfinite", default="skip", choices=("raise", "skip", "ignore"),
                   help="the optimizers' nonfinite mode (raise: one host read per step, a graph break by design)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # in a subprocess: print one JSON line
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.one:
        print(json.dumps(measure(args.one, device, args.nonfinite)))
        return
    sys.path.insert(0, os.path.dirname(__file__))
    from common import cpu_description

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description()
    print(f"{where}; torch {torch.__version__}; nonfinite={args.nonfinite!r}\n")
    print("| optimizer | graphs | graph breaks | first break | first call (compile) s | compiled step ms | eager step ms |")
    print("|---|---|---|---|---|---|---|")
    for name in args.optimizers.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--device", args.device, "--nonfinite", args.nonfinite]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else str(out.returncode)
            print(f"| {name} | failed: {last[:150]} | | | | | |")
            continue
        m = json.loads(out.stdout.strip().splitlines()[-1])
        reason = m["first_break"].replace("|", "/")
        print(f"| {name} | {m['graphs']} | {m['breaks']} | {reason} | {m['compile_s']:.1f} | {m['compiled_ms']:.2f} | {m['eager_ms']:.2f} |")


if __name__ == "__main__":
    main()

"""Optimizer memory on GPT-2-small shapes: state bytes per weight byte, CPU buffers kept between
steps, and the peak extra memory during ``step()``.

Each optimizer runs in its own subprocess (a fresh allocator): the weights and gradients of two
GPT-2-small layers (8 matrices, 14.2M float32 entries, as ``nn.Linear`` weights applied to one
input so that Newton-Muon's hooks see their inputs; ``--layers`` for more), three warm-up steps,
then one measured step.

* state: the bytes of every tensor in ``optimizer.state``;
* kept buffers: the CPU scratch buffers a matrix optimizer keeps between steps (``release_buffers``);
* peak during step: Linux's resident-set high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs``) during one ``step()``, minus the resident set just before it: what a
  step allocates on top of weights, gradients, state and kept buffers.

Every figure is divided by the weights' bytes. On CUDA the GPU check measures
``torch.cuda.max_memory_allocated`` instead. Usage::

    python benchmarks/memory.py                  # every optimizer, a markdown table
    python benchmarks/memory.py --optimizers muon,adamw --layers 12   # all of GPT-2 small's hidden matrices
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from torch import nn

# the hidden matrices of GPT-2 small, two layers: fused qkv, attention out, MLP up, MLP down
LAYER = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]
DEFAULT = ["adamw", "torch-muon", "muon", "normuon", "neon-nuclear", "neon-fstar", "dion", "shampoo", "newton-muon", "modular"]


class Layers(nn.Module):
    """``count`` layers' matrices, each applied to an input of its width (the loss sums their squared outputs)."""

    def __init__(self, count: int = 2) -> None:
        super().__init__()
        self.mats = nn.ModuleList(nn.Linear(n, m, bias=False) for m, n in count * LAYER)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return sum(layer(x).square().mean() for layer, x in zip(self.mats, inputs))


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def measure(name: str, layers: int = 2) -> dict:
    """One optimizer's figures, in this process."""
    import steepest.bench  # noqa: F401  (registers the peers)
    from steepest.optim.registry import registration

    torch.manual_seed(0)
    model = Layers(layers)
    params = list(model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    r = registration(name)
    kw = {"model": model} if r.needs_model else {}
    opt = r.build([(f"mats.{i}.weight", p) for i, p in enumerate(params)], lr=r.default_lr, **kw)
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(64, layer.in_features, generator=gen) for layer in model.mats]
    for _ in range(3):
        opt.zero_grad(set_to_none=False)
        model(inputs).backward()
        opt.step()
    opt.zero_grad(set_to_none=False)
    model(inputs).backward()
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    opt.step()
    peak = _rss_kib("VmHWM")
    kept = _tensor_bytes(getattr(opt, "__dict__", {}).get("_scratch", {}))
    return {
        "optimizer": name,
        "state": _tensor_bytes(dict(opt.state)) / weight_bytes,
        "kept": kept / weight_bytes,
        "peak": max(0, peak - before) * 1024 / weight_bytes,
        "weight_mb": weight_bytes / 2**20,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizers", default=",".join(DEFAULT))
    p.add_argument("--layers", type=int, default=2, help="GPT-2-small layers (4 matrices each; default 2)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # run in a subprocess: print one JSON line
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.layers)))
        return
    sys.path.insert(0, os.path.dirname(__file__))
    from common import cpu_description

    print(f"{cpu_description()}; torch {torch.__version__}\n")
    print("| optimizer | state / weights | CPU buffers kept between steps / weights | peak extra during step() / weights |")
    print("|---|---|---|---|")
    for name in args.optimizers.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", name, "--layers", str(args.layers)], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode} | | |")
            continue
        m = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {m['state']:.2f} | {m['kept']:.2f} | {m['peak']:.2f} |")
    print(f"\nWeights: {4 * args.layers} float32 matrices of {args.layers} GPT-2-small layers, {m['weight_mb']:.1f} MiB.")


if __name__ == "__main__":
    main()

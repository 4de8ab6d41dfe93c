"""Share of a training step spent in the optimizer, for the shakespeare-gpt model at GPT-2-small width.

    python benchmarks/train_step.py                    # CPU: width 768, 2 layers, batch 4 x 64 tokens
    python benchmarks/train_step.py --n-layer 12 --batch 16 --block-size 1024   # GPT-2 small on a GPU

Per optimizer: the median over ``--repeats`` steps of forward+backward and of ``optimizer.step()``
(synchronised on CUDA, bf16 autocast there), and the optimizer's share of the total.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from common import fmt, header, measure_peaks, time_fn

import steepest
from steepest.bench.models import GPT, GPTConfig

DEFAULT = ["adamw", "muon", "neon-nuclear", "neon-fstar", "newton-muon", "shampoo", "sign", "sgd", "torch-muon"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--optimizers", default=",".join(DEFAULT))
    parser.add_argument("--n-layer", type=int, default=None, help="default 12 on CUDA, 2 on CPU")
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--block-size", type=int, default=None, help="default 1024 on CUDA, 64 on CPU")
    parser.add_argument("--batch", type=int, default=None, help="default 16 on CUDA, 4 on CPU")
    parser.add_argument("--vocab", type=int, default=65, help="character-level Shakespeare has 65 symbols")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peak-size", type=int, default=None, help="size of the product that measures the matmul peak (default 8192 on CUDA, 4096 on CPU)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per optimizer before repeats are cut")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    n_layer = args.n_layer or (12 if cuda else 2)
    block = args.block_size or (1024 if cuda else 64)
    batch = args.batch or (16 if cuda else 4)
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in steepest.optimizer_names()]
    if unknown:
        parser.error(f"unknown optimizers {unknown}; valid: {', '.join(steepest.optimizer_names())}")
    cfg = GPTConfig(vocab_size=args.vocab, block_size=block, n_layer=n_layer, n_head=args.n_head, n_embd=args.n_embd)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (batch, block), generator=gen).to(device)
    y = torch.randint(0, args.vocab, (batch, block), generator=gen).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    peaks = measure_peaks(device, args.peak_size)
    print(header(device, peaks, f"Optimizer share of a training step: GPT {n_layer}×{args.n_embd} (heads {args.n_head}), batch {batch}×{block} tokens"))
    print("| optimizer | forward+backward ms | optimizer.step ms | step share | n |")
    print("|---|---|---|---|---|")
    for name in names:
        torch.manual_seed(0)
        model = GPT(cfg).to(device)
        try:
            opt = steepest.build_optimizer(model, name, head=["lm_head.weight"])
        except ValueError as exc:
            print(f"| {name} | – | – | – | {exc} |")
            continue

        def forward_backward():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x).float().reshape(-1, args.vocab), y.reshape(-1))
            loss.backward()

        fb_ms, n1 = time_fn(forward_backward, device, args.repeats, args.budget / 2)
        forward_backward()
        grads = [p.grad for p in model.parameters()]

        def step():
            for p, g in zip(model.parameters(), grads):
                p.grad = g
            opt.step()

        st_ms, n2 = time_fn(step, device, args.repeats, args.budget / 2)
        print(f"| {name} | {fmt(fb_ms)} | {fmt(st_ms)} | {100 * st_ms / (fb_ms + st_ms):.1f}% | {min(n1, n2)} |")


if __name__ == "__main__":
    main()

"""Milliseconds per full optimizer step over a set of matrices: ours, the peers, the floor.

    python benchmarks/directions.py                       # CPU: GPT-2 small's structure at width 128
    python benchmarks/directions.py --set gpt2-small      # GPT-2 small's 72 hidden matrices (GPU default)
    python benchmarks/directions.py --set llama7b-layer --device cuda

Each row times ``optimizer.step()`` (or, for the decomposition rows, the decompositions alone) over
every matrix of the set, gradients in place: the median of ≥ 10 synchronised calls after two
warm-up calls (fewer where ``--budget`` seconds allow no more; the ``n`` column says). Gradients
have a power-law spectrum ``σᵢ ∝ 1/i`` like real ones. The floor is the method's FLOPs over the
matmul rate measured in the same run, or its minimal bytes over the measured copy bandwidth,
whichever is larger. ``rel. err`` is ``‖D − D_exact‖_F/‖D_exact‖_F`` on one matrix of each shape
against float64 (for Neon: after 3 warm steps on a drifting matrix, the production setting).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable

import torch

from common import MATRIX_SETS, fmt, header, measure_peaks, time_fn

import steepest
from steepest.directions import msgn
from steepest.directions.dion import dion_rank
from steepest.directions.families import matrix_with_spectrum
from steepest.directions.kernels import use_symmetric_kernel
from steepest.directions.msgn import default_iteration_dtype
from steepest.directions.reference import reference_fstar, reference_msgn, reference_nuclear, relative_error
from steepest.optim.neon import block_columns


@dataclass
class Row:
    name: str
    make_step: Callable[[list[torch.nn.Parameter]], Callable[[], object]]
    flops: Callable[[int, int], float]  # per matrix of shape (m, n)
    bytes_per_element: float = 20.0  # read g, read/write momentum, read/write weight (float32)
    accuracy: Callable[[torch.Tensor], float] | None = None
    available: Callable[[torch.device], bool] = lambda device: True
    note: str = ""


def polynomial_flops(m: int, n: int, steps: int = 5, symmetric: bool = False) -> float:
    """5 quintic steps: ``XXᵀ`` (2p²q), ``A·A`` (2p³), ``B·X`` (2p²q); the symmetric kernel
    computes half of the first two."""
    p, q = min(m, n), max(m, n)
    return steps * ((3 * p * p * q + p**3) if symmetric else (4 * p * p * q + 2 * p**3))


def lowrank_flops(m: int, n: int, width: int, iters: int = 1) -> float:
    # iters power iterations (2 products each) + Rayleigh–Ritz (2 products) + QRs + the update U·diag·Vᵀ
    return (iters + 1) * 4 * m * n * width + 3 * 4 * (m + n) * width**2 + 2 * m * n * width


def svd_flops(m: int, n: int) -> float:
    p, q = min(m, n), max(m, n)
    return 4 * p * p * q + 22 * p**3  # Golub & Van Loan's R-SVD count with both factors


def shampoo_flops(m: int, n: int, update_every: int = 10) -> float:
    stats = 2 * m * m * n + 2 * m * n * n
    apply = 2 * m * m * n + 2 * m * n * n
    roots = 9 * (m**3 + n**3) + 2 * (m**3 + n**3)  # eigh with vectors + Q·diag·Qᵀ
    return stats + apply + roots / update_every


def power_law_gradient(m: int, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    k = min(m, n)
    S = 1.0 / torch.arange(1, k + 1, dtype=torch.float64)
    return matrix_with_spectrum(m, n, S, gen).to(device=device, dtype=torch.float32)


def optimizer_row(name: str, factory: Callable, flops: Callable, accuracy=None, note: str = "", available=lambda d: True, bytes_per_element: float = 20.0) -> Row:
    def make(params):
        grads = [p.grad for p in params]
        opt = factory(params)

        def step():
            for p, g in zip(params, grads):  # some peers (heavyball) consume p.grad
                p.grad = g
            opt.step()

        return step

    return Row(name, make, flops, bytes_per_element, accuracy, available, note)


def msgn_accuracy(method: str) -> Callable[[torch.Tensor], float]:
    def acc(G: torch.Tensor) -> float:
        D = msgn(G, method=method, dtype=default_iteration_dtype(G.device))
        return relative_error(D.cpu(), reference_msgn(G.cpu()))

    return acc


def neon_accuracy(mode: str) -> Callable[[torch.Tensor], float]:
    """3 warm optimizer steps on a drifting matrix (momentum 0: D is the direction of the last G)."""

    def acc(G: torch.Tensor) -> float:
        W = torch.nn.Parameter(torch.zeros_like(G))
        opt = steepest.Neon([W], lr=1.0, mode=mode, momentum=0.0)
        gen = torch.Generator(device="cpu").manual_seed(7)
        for _ in range(4):
            Gt = G + 1e-3 * G.norm() / math.sqrt(G.numel()) * torch.randn(G.shape, generator=gen).to(G.device)
            before = W.detach().clone()
            W.grad = Gt
            opt.step()
        D = (before - W.detach()).cpu()
        ref = reference_nuclear(Gt.cpu()) if mode == "nuclear" else reference_fstar(Gt.cpu())
        return relative_error(D, ref)

    return acc


def build_rows(device: torch.device, ns_dtype: torch.dtype) -> list[Row]:
    mu = 0.95

    def ours(m: int, n: int) -> float:
        return polynomial_flops(m, n, symmetric=use_symmetric_kernel(torch.empty(0, min(m, n), max(m, n), device=device)))

    rows = [
        optimizer_row("steepest Muon, Newton–Schulz", lambda ps: steepest.Muon(ps, momentum=mu, msgn_method="newton_schulz"),
                      ours, msgn_accuracy("newton_schulz")),
        optimizer_row("steepest Muon, Polar Express", lambda ps: steepest.Muon(ps, momentum=mu), ours, msgn_accuracy("polar_express")),
        optimizer_row("steepest Neon nuclear", lambda ps: steepest.Neon(ps, mode="nuclear"),
                      lambda m, n: lowrank_flops(m, n, block_columns(1, 8, m, n), iters=1), neon_accuracy("nuclear"), note="block 16, 1 warm iteration"),
        optimizer_row("steepest Neon F*", lambda ps: steepest.Neon(ps, mode="fstar"),
                      lambda m, n: lowrank_flops(m, n, block_columns(2, 8, m, n), iters=2), neon_accuracy("fstar"),
                      note="block 16 (r + 9 rounded up; r = 1 for σᵢ ∝ 1/i), 2 warm iterations"),
        optimizer_row("steepest Dion", lambda ps: steepest.Dion(ps, momentum=mu), _dion_flops,
                      note="r = min(m,n)/4, 1 warm power iteration + error feedback; not an msgn approximation"),
        optimizer_row("steepest NewtonMuon", _newton_muon, lambda m, n: ours(m, n) + 2 * m * n * n + 2 * n**3 / 32,
                      note="K⁻¹ refreshed every 32 steps (amortised)"),
        optimizer_row("steepest Shampoo (amortised)", lambda ps: steepest.Shampoo(ps, update_every=10), shampoo_flops,
                      note="roots every 10 steps; median hides the refresh: see mean below"),
        optimizer_row("steepest sign", lambda ps: steepest.SignDescent(ps), lambda m, n: 0.0, lambda G: 0.0),
        optimizer_row("torch.optim.Muon", lambda ps: torch.optim.Muon(ps, momentum=mu, adjust_lr_fn="original"),
                      lambda m, n: polynomial_flops(m, n), _torch_muon_accuracy,
                      available=lambda d: hasattr(torch.optim, "Muon"), note="bf16, one matrix at a time"),
        optimizer_row("torch.optim.AdamW(fused=True)", lambda ps: torch.optim.AdamW(ps, fused=True), lambda m, n: 0.0,
                      bytes_per_element=28.0, note="memory-bound"),
        Row("torch.linalg.svd (exact msgn)", _decomposition(lambda G: torch.linalg.svd(G, full_matrices=False)), svd_flops,
            bytes_per_element=4.0, note="decomposition only, batched per shape"),
        Row("torch.svd_lowrank(q=8, niter=2)", _decomposition(lambda G: torch.svd_lowrank(G, q=8, niter=2)),
            lambda m, n: 6 * 2 * m * n * 8, bytes_per_element=4.0, note="decomposition only"),
        Row("cupy svds(k=1) (Neon seed)", _cupy_svds, lambda m, n: lowrank_flops(m, n, 1), bytes_per_element=4.0,
            available=lambda d: d.type == "cuda" and _has("cupy"), note="Lanczos, one matrix at a time"),
        optimizer_row("heavyball Muon", lambda ps: __import__("heavyball").Muon(ps, lr=0.02), lambda m, n: polynomial_flops(m, n),
                      available=lambda d: _has("heavyball"), note="optional peer"),
    ]
    return rows


def _dion_flops(m: int, n: int) -> float:
    """``BQ``, ``BᵀP``, ``PQᵀ`` and the error feedback ``PRᵀ`` (2mnr each) and the QR (≈ 4mr²)."""
    r = dion_rank((m, n), 0.25)
    return 8 * m * n * r + 4 * m * r * r


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _newton_muon(params):
    opt = steepest.NewtonMuon(params, momentum=0.95)
    for p in params:  # as if hooks had collected inputs Z with ZᵀZ/N = diag(1..2)
        n = p.shape[1]
        opt._sums[p] = [torch.diag(torch.linspace(1, 2, n, device=p.device)) * 64, 64]
    return opt


def _torch_muon_accuracy(G: torch.Tensor) -> float:
    from torch.optim._muon import _zeropower_via_newtonschulz

    D = _zeropower_via_newtonschulz(G, (3.4445, -4.7750, 2.0315), 5, 1e-7).float()
    return relative_error(D.cpu(), reference_msgn(G.cpu()))


def _decomposition(fn):
    def make(params):
        by_shape: dict[tuple, list] = {}
        for p in params:
            by_shape.setdefault(tuple(p.shape), []).append(p.grad)
        stacks = [torch.stack(gs) for gs in by_shape.values()]
        return lambda: [fn(G) for G in stacks]

    return make


def _cupy_svds(params):
    import cupy
    import cupyx.scipy.sparse.linalg as cusla

    mats = [cupy.asarray(p.grad) for p in params]
    return lambda: [cusla.svds(M, k=1) for M in mats]


def run(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    shapes = MATRIX_SETS[args.set]
    gen = torch.Generator().manual_seed(0)
    base = {s: power_law_gradient(*s, gen, device) for s in sorted(set(shapes))}
    peaks = measure_peaks(device, args.peak_size)
    ns_dtype = default_iteration_dtype(device)
    total_elements = sum(m * n for m, n in shapes)
    lines = [
        header(device, peaks, f"Optimizer step over `{args.set}` ({len(shapes)} matrices, {total_elements / 1e6:.1f} M weights)"),
        f"our polynomial msgn computes in {str(ns_dtype).replace('torch.', '')} here; torch.optim.Muon always in bf16\n",
        "| method | ms/step | n | TFLOP/s | GB/s | floor ms | × floor | rel. err vs float64 | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    wanted = [r.strip().lower() for r in args.rows.split(",")] if args.rows else None
    results = {}
    for row in build_rows(device, ns_dtype):
        if wanted and not any(w in row.name.lower() for w in wanted):
            continue
        if not row.available(device):
            lines.append(f"| {row.name} | not run | | | | | | | not available here |")
            continue
        params = []
        for s in shapes:
            p = torch.nn.Parameter(torch.randn(s, device=device) * 0.02)
            p.grad = base[s] + 1e-3 * torch.randn(s, generator=gen).to(device) / math.sqrt(max(s))
            params.append(p)
        try:
            step = row.make_step(params)
            ms, n = time_fn(step, device, args.repeats, args.budget)
            before = params[0].detach().clone()
            step()
            moved = not torch.equal(before, params[0].detach())
        except Exception as exc:  # a peer failing must not hide the others
            lines.append(f"| {row.name} | failed | | | | | | | {type(exc).__name__}: {str(exc)[:60]} |")
            continue
        if row.bytes_per_element != 4.0 and not moved:  # optimizer rows must change the weights
            lines.append(f"| {row.name} | no update | | | | | | | its step left the weights unchanged |")
            continue
        flops = sum(row.flops(m, n_) for m, n_ in shapes)
        bytes_moved = row.bytes_per_element * total_elements
        floor_ms = 1e3 * max(flops / peaks["flops"], bytes_moved / peaks["bandwidth"])
        err = "–"
        if row.accuracy is not None:
            errs = [row.accuracy(base[s]) for s in sorted(set(shapes))]
            err = fmt(max(errs), 2)
        results[row.name] = ms
        lines.append(
            f"| {row.name} | {fmt(ms)} | {n} | {fmt(flops / (ms / 1e3) / 1e12)} | {fmt(bytes_moved / (ms / 1e3) / 1e9)} | "
            f"{fmt(floor_ms)} | {fmt(ms / floor_ms if floor_ms else float('nan'))} | {err} | {row.note} |"
        )
        del params
    ratios = []
    ours, theirs = results.get("steepest Muon, Polar Express"), results.get("torch.optim.Muon")
    if ours and theirs:
        ratios.append(f"torch.optim.Muon / our Muon (Polar Express): {theirs / ours:.1f}×")
    neon = results.get("steepest Neon nuclear")
    if ours and neon:
        ratios.append(f"our Muon / our Neon nuclear: {ours / neon:.1f}×")
    adamw = results.get("torch.optim.AdamW(fused=True)")
    if neon and adamw:
        ratios.append(f"Neon nuclear / fused AdamW: {neon / adamw:.2f}×")
    fstar = results.get("steepest Neon F*")
    if fstar and ours:
        ratios.append(f"Neon F* / our Muon: {fstar / ours:.2f}×")
    svds = results.get("cupy svds(k=1) (Neon seed)")
    if svds and neon:
        ratios.append(f"cupy svds / Neon nuclear: {svds / neon:.0f}×")
    if ratios:
        lines.append("\nRatios (same run): " + "; ".join(ratios))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=sorted(MATRIX_SETS), default=None, help="matrix set (default: gpt2-small on CUDA, gpt2-width128 on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peak-size", type=int, default=None, help="size of the product that measures the matmul peak (default 8192 on CUDA, 4096 on CPU)")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per row before repeats are cut (default 30)")
    parser.add_argument("--rows", default="", help="comma-separated substrings of row names to run (default: all)")
    args = parser.parse_args(argv)
    if args.set is None:
        args.set = "gpt2-small" if args.device.startswith("cuda") else "gpt2-width128"
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    print(run(args))


if __name__ == "__main__":
    main()

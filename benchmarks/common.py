"""Shared pieces of the speed scripts: matrix sets, timing, the measured hardware floor."""

from __future__ import annotations

import datetime
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch

MATRIX_SETS: dict[str, list[tuple[int, int]]] = {
    # hidden matrices of GPT-2 small: per layer q, k, v, o (768²), MLP up 768→3072 (3072×768), down (768×3072)
    "gpt2-small": 12 * ([(768, 768)] * 4 + [(3072, 768), (768, 3072)]),
    # one LLaMA-7B layer: q, k, v, o (4096²), up/gate-like 11008×4096 and down 4096×11008
    "llama7b-layer": [(4096, 4096)] * 4 + [(11008, 4096), (4096, 11008)],
    # GPT-2 small's structure at width 128 (72 matrices): what 2 CPU cores can time for every row
    "gpt2-width128": 12 * ([(128, 128)] * 4 + [(512, 128), (128, 512)]),
    # one GPT-2 small layer (6 matrices)
    "gpt2-small-1layer": [(768, 768)] * 4 + [(3072, 768), (768, 3072)],
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, repeats: int, budget_s: float, warmup: int = 2) -> tuple[float, int]:
    """Median milliseconds of ``fn`` over ``repeats`` synchronised calls after ``warmup`` calls;
    fewer repeats (≥ 1) when the budget allows no more. Returns ``(median_ms, repeats_done)``."""
    last = 0.0
    for _ in range(warmup):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        last = time.perf_counter() - t0
    n = max(1, min(repeats, int(budget_s / max(last, 1e-9))))
    times = []
    for _ in range(n):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), n


def cpu_description() -> str:
    """One line naming this CPU: its model name and the flags that decide bf16 speed (AVX2,
    AVX512-BF16, AMX from /proc/cpuinfo, and torch's own probes), and the msgn iteration dtype
    that :func:`steepest.directions.msgn.default_iteration_dtype` picks on it."""
    from steepest.directions.msgn import default_iteration_dtype

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    probe = lambda name: bool(getattr(torch.cpu, name, lambda: False)())  # noqa: E731
    has = lambda flag: "yes" if flag in flags else ("no" if flags else "?")  # noqa: E731
    kind = "AMX" if probe("_is_amx_tile_supported") else "AVX512-BF16" if probe("_is_avx512_bf16_supported") else "AVX2" if probe("_is_avx2_supported") else "other"
    return (
        f"CPU: {model}; {torch.get_num_threads()} threads; kind {kind} (flags: avx2 {has('avx2')}, avx512_bf16 "
        f"{has('avx512_bf16')}, amx_tile {has('amx_tile')}, amx_bf16 {has('amx_bf16')}); msgn iteration dtype here: "
        f"{str(default_iteration_dtype('cpu')).replace('torch.', '')}"
    )


def measure_peaks(device: torch.device, size: int | None = None) -> dict[str, float]:
    """The floor's two rates, measured in this run: matmul FLOP/s (an 8192³ bf16 product on CUDA; a
    4096³ product on CPU in the precision our CPU path computes in there, bf16 with native bf16
    matmuls, float32 otherwise) and copy bandwidth. ``size`` overrides the product's size (smoke tests)."""
    from steepest.directions.msgn import default_iteration_dtype

    if device.type == "cuda":
        default, dtype, copy_bytes = 8192, torch.bfloat16, 1 << 30
    else:
        default, dtype, copy_bytes = 4096, default_iteration_dtype(device), 1 << 28
    size = size or default
    copy_bytes = min(copy_bytes, 4 * size * size)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    ms, _ = time_fn(lambda: a @ b, device, repeats=5, budget_s=20, warmup=1)
    flops = 2 * size**3 / (ms / 1e3)
    src = torch.empty(copy_bytes // 4, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    ms, _ = time_fn(lambda: dst.copy_(src), device, repeats=5, budget_s=10, warmup=1)
    bandwidth = 2 * copy_bytes / (ms / 1e3)
    return {"flops": flops, "bandwidth": bandwidth, "matmul": f"{size}³ {str(dtype).replace('torch.', '')}"}


def header(device: torch.device, peaks: dict[str, float], title: str) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description()
    return (
        f"## {title}\n\n"
        f"device: {name}; torch {torch.__version__}; {datetime.date.today().isoformat()}\n"
        f"floor rates measured in this run: matmul {peaks['flops'] / 1e12:.3f} TFLOP/s ({peaks['matmul']}), "
        f"copy {peaks['bandwidth'] / 1e9:.1f} GB/s\n"
    )


def fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"

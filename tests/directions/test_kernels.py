"""The Triton symmetric-product kernel against plain PyTorch, run by Triton's CPU interpreter
(``TRITON_INTERPRET=1``, set in a subprocess because Triton reads it when a kernel is defined),
and its opt-in switch. Skipped where Triton is not installed (it is an optional extra).

Tolerance: float32 products accumulated in a different order, 1e-5 relative to ‖X‖² (measured
~1e-9: the interpreter multiplies in float32 like IEEE ``tl.dot``). The interpreter (Triton 3.x)
stores bf16 as raw 16-bit integers and its ``tl.dot`` multiplies those, so bf16 through the kernel
can only be checked on a GPU (``pytest -m cuda``); the 64-bit batch offsets matter from
``b·m·n ≥ 2³¹`` entries, beyond a CPU test's memory."""

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from steepest.directions import kernels
from steepest.directions.kernels import enable_symmetric_kernel, symmetric_product, use_symmetric_kernel

SCRIPT = textwrap.dedent(
    """
    import torch
    from steepest.directions.kernels import triton_symmetric_product
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    cases = [(1, 16, 16, False), (2, 100, 70, False), (3, 65, 130, False), (1, 1, 40, False), (2, 256, 192, True)]
    for b, m, n, transposed in cases:
        X = torch.randn(b, n, m, generator=gen).mT if transposed else torch.randn(b, m, n, generator=gen)
        C = torch.randn(b, m, m, generator=gen); C = C + C.mT
        for alpha, beta, CC in [(1.0, 0.0, None), (0.7, -1.3, C)]:
            out = triton_symmetric_product(X, alpha, beta, CC, block_m=32, block_k=16)
            ref = alpha * X.double() @ X.double().mT + (beta * C.double() if CC is not None else 0)
            worst = max(worst, ((out.double() - ref).abs().max() / (X.double().norm() ** 2 + C.double().norm())).item())
            assert out.shape == ref.shape and out.dtype == X.dtype
            off = torch.triu(torch.ones(m, m, dtype=torch.bool), diagonal=32)
            assert torch.equal(out[:, off], out.mT[:, off])  # mirrored tiles are exact copies
    # a whole msgn through the kernel path (normally opt-in and CUDA-only) against the plain path
    import steepest.directions.msgn as msgn_module
    from steepest.directions import msgn
    G = torch.randn(3, 40, 72, generator=gen)
    plain = msgn(G, dtype=torch.float32)
    msgn_module.use_symmetric_kernel = lambda X: True
    kernel = msgn(G, dtype=torch.float32)
    assert ((kernel - plain).norm() / plain.norm()).item() <= 1e-5
    print(worst)
    """
)


def test_triton_kernel_matches_torch_in_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) <= 1e-5


def test_fallback_is_plain_matmul():
    X = torch.randn(2, 8, 5)
    C = torch.randn(2, 8, 8)
    torch.testing.assert_close(symmetric_product(X), X @ X.mT)
    torch.testing.assert_close(symmetric_product(X, 0.5, 2.0, C), 0.5 * X @ X.mT + 2.0 * C)


def fake_cuda_batch(m: int = 512):
    """What use_symmetric_kernel reads of a CUDA tensor (none exists on a CPU machine)."""
    return SimpleNamespace(is_cuda=True, ndim=3, shape=(4, m, 2 * m))


def test_kernel_is_opt_in(monkeypatch):
    monkeypatch.delenv(kernels.ENV_VARIABLE, raising=False)
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    monkeypatch.setattr(kernels, "_enabled", None)
    assert not use_symmetric_kernel(fake_cuda_batch())  # the default: plain torch matmuls
    monkeypatch.setenv(kernels.ENV_VARIABLE, "1")
    assert use_symmetric_kernel(fake_cuda_batch())
    assert not use_symmetric_kernel(fake_cuda_batch(m=128))  # small: the plain matmul
    enable_symmetric_kernel(False)
    assert not use_symmetric_kernel(fake_cuda_batch())  # the call wins over the environment
    enable_symmetric_kernel(True)
    assert use_symmetric_kernel(fake_cuda_batch())
    assert not use_symmetric_kernel(torch.randn(4, 512, 1024))  # CPU tensors never take it
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    assert not use_symmetric_kernel(fake_cuda_batch())
    with pytest.raises(ValueError, match="enabled must be True, False or None"):
        enable_symmetric_kernel("yes")

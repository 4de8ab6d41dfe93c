"""The Triton symmetric-product kernel against plain PyTorch, run by Triton's CPU interpreter
(``TRITON_INTERPRET=1``, set in a subprocess because Triton reads it when a kernel is defined).

Tolerance: float32 products accumulated in a different order, 1e-5 relative to ‖X‖²."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from steepest.directions.kernels import symmetric_product

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import torch
    from steepest.directions.kernels import triton_symmetric_product
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for b, m, n in [(1, 16, 16), (2, 100, 70), (3, 65, 130), (1, 1, 40)]:
        X = torch.randn(b, m, n, generator=gen)
        C = torch.randn(b, m, m, generator=gen); C = C + C.mT
        for alpha, beta, CC in [(1.0, 0.0, None), (0.7, -1.3, C)]:
            out = triton_symmetric_product(X, alpha, beta, CC, block_m=32, block_k=16)
            ref = alpha * X @ X.mT + (beta * C if CC is not None else 0)
            worst = max(worst, ((out - ref).abs().max() / (X.norm() ** 2 + C.norm())).item())
            assert out.shape == ref.shape
            off = torch.triu(torch.ones(m, m, dtype=torch.bool), diagonal=32)
            assert torch.equal(out[:, off], out.mT[:, off])  # mirrored tiles are exact copies
    # a whole msgn through the kernel path (normally CUDA-only) against the plain path
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
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) <= 1e-5


def test_fallback_is_plain_matmul():
    X = torch.randn(2, 8, 5)
    C = torch.randn(2, 8, 8)
    torch.testing.assert_close(symmetric_product(X), X @ X.mT)
    torch.testing.assert_close(symmetric_product(X, 0.5, 2.0, C), 0.5 * X @ X.mT + 2.0 * C)

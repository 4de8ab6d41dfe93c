"""On a CUDA GPU (``pytest -m cuda``; skipped without one): the Triton kernel against torch's
matmuls at real sizes, ``compile=True``, parity with ``torch.optim.Muon``, every optimizer's step.

Run by ``benchmarks/gpu_check.py`` on a lent H100/H200. Tolerances (relative Frobenius errors
against float64 references computed on the GPU):

- the kernel in float32: Triton's ``tl.dot`` rounds float32 inputs to tf32 (10-bit mantissa), so
  ≤ 2e-3 (tf32 products summed in float32 land near 3e-4); in bf16: ≤ 1e-2 (the output is rounded
  to bf16, 2⁻⁹ relative, and so are torch's);
- ``compile=True`` against eager: ≤ 1e-3 after 3 steps (the compiler fuses and reorders
  bf16/float32 arithmetic);
- our Muon (Newton–Schulz, bf16, scale "original") against ``torch.optim.Muon``: the same
  arithmetic, batched by shape instead of one matrix at a time, so cuBLAS may pick other kernels:
  ≤ 2e-2 on the weight change after 3 steps (bf16 iterates);
- each optimizer's first update on CUDA against the same update on the CPU: cosine ≥ 0.9 (the
  iterations run in bf16 on the GPU and float32 or bf16 on the CPU; a wrong formula, a device
  mix-up or a dropped parameter gives far less).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by benchmarks/gpu_check.py)"),
]

DEVICE = "cuda"
# GPT-2 small's hidden shapes (q/k/v/o, MLP up and down) and a size that is no multiple of a tile.
KERNEL_SHAPES = [(4, 768, 768), (2, 768, 3072), (2, 1000, 520)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(autouse=True)
def _no_tf32_in_torch():
    """torch's float32 matmuls in full float32 (the reference side), whatever the session set."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_symmetric_product_matches_torch(shape, dtype, tol):
    pytest.importorskip("triton")
    from steepest.directions.kernels import triton_symmetric_product

    gen = torch.Generator(device=DEVICE).manual_seed(0)
    X = torch.randn(shape, device=DEVICE, generator=gen).to(dtype)
    C = torch.randn(shape[0], shape[1], shape[1], device=DEVICE, generator=gen)
    C = (C + C.mT).to(dtype)
    Xd, Cd = X.double(), C.double()
    for alpha, beta, CC in [(1.0, 0.0, None), (0.7, -1.3, C)]:
        out = triton_symmetric_product(X, alpha, beta, CC)
        ref = alpha * Xd @ Xd.mT + (beta * Cd if CC is not None else 0)
        torch_out = torch.baddbmm(C, X, X.mT, beta=beta, alpha=alpha) if CC is not None else alpha * (X @ X.mT)
        assert out.shape == ref.shape and out.dtype == dtype
        assert torch.isfinite(out).all()
        err, torch_err = _rel(out, ref), _rel(torch_out, ref)
        assert err <= tol, f"kernel error {err:.2e} (torch's own: {torch_err:.2e})"
        assert torch.equal(out, out.mT), "mirrored tiles must be exact copies"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_msgn_through_the_kernel_matches_the_plain_path(monkeypatch, dtype):
    pytest.importorskip("triton")
    import steepest.directions.msgn as msgn_module
    from steepest.directions import msgn
    from steepest.directions.reference import reference_msgn

    gen = torch.Generator(device=DEVICE).manual_seed(1)
    G = torch.randn(3, 768, 3072, device=DEVICE, generator=gen)
    monkeypatch.setattr(msgn_module, "use_symmetric_kernel", lambda X: False)
    plain = msgn(G, dtype=dtype)
    monkeypatch.setattr(msgn_module, "use_symmetric_kernel", lambda X: True)
    kernel = msgn(G, dtype=dtype)
    ref = reference_msgn(G[0].double().cpu())
    plain_err, kernel_err = _rel(plain[0].cpu(), ref), _rel(kernel[0].cpu(), ref)
    # The kernel must not make msgn worse than the plain path by more than bf16/tf32 rounding.
    assert kernel_err <= plain_err + (2e-2 if dtype == torch.bfloat16 else 5e-3), (kernel_err, plain_err)
    assert _rel(kernel, plain) <= (3e-2 if dtype == torch.bfloat16 else 5e-3)


def _gpt2_layer(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[nn.Parameter]:
    torch.manual_seed(seed)
    shapes = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]
    return [nn.Parameter((torch.randn(s) * 0.02).to(device=DEVICE, dtype=dtype)) for s in shapes]


def _grads(params: list[nn.Parameter], step: int) -> list[torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(100 + step)
    out = []
    for p in params:
        m, n = p.shape
        low = torch.randn(m, 8, generator=gen) @ torch.randn(8, n, generator=gen)  # a dominant low-rank part, as in real gradients
        out.append((low + 0.1 * torch.randn(m, n, generator=gen)).to(device=p.device, dtype=p.dtype) * 1e-3)
    return out


@pytest.mark.parametrize("name", ["Muon", "Neon"])
def test_compile_matches_eager_on_cuda(name):
    import steepest

    cls = getattr(steepest, name)
    eager, compiled = _gpt2_layer(), _gpt2_layer()
    a, b = cls(eager, lr=0.02), cls(compiled, lr=0.02, compile=True)
    start = [p.detach().clone() for p in eager]
    for step in range(3):
        for params, opt in ((eager, a), (compiled, b)):
            for p, g in zip(params, _grads(params, step)):
                p.grad = g
            opt.step()
    for p, q, s in zip(eager, compiled, start):
        assert _rel(q - s, p - s) <= 1e-3
    assert b._compiled  # the compiled path ran


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_torch_optim_muon_on_cuda(nesterov):
    from steepest import Muon

    ours, theirs = _gpt2_layer(), _gpt2_layer()
    start = [p.detach().clone() for p in ours]
    kw = dict(lr=0.02, momentum=0.95, nesterov=nesterov, weight_decay=0.1)
    a = Muon(ours, msgn_method="newton_schulz", msgn_dtype=torch.bfloat16, scale="original", **kw)
    b = torch.optim.Muon(theirs, adjust_lr_fn="original", **kw)
    for step in range(3):
        for params, opt in ((ours, a), (theirs, b)):
            for p, g in zip(params, _grads(params, step)):
                p.grad = g
            opt.step()
    errs = [_rel(p - s, q - s) for p, q, s in zip(ours, theirs, start)]
    assert max(errs) <= 2e-2, errs


def _small_gpt():
    from steepest.bench.models import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=256))


def _available_optimizers() -> list[str]:
    from steepest.optim.build import optimizer_names

    return optimizer_names()


@pytest.mark.parametrize("name", _available_optimizers())
def test_every_optimizer_steps_on_cuda_like_on_cpu(name):
    """Three steps of a small GPT (width 256) on CUDA (the first in float32, then bf16 autocast):
    finite, every weight moves, the state lives on the GPU, the loss on the fixed batch goes down
    at a tenth of the default rate; the first update points where the CPU's does (cosine ≥ 0.9)."""
    from steepest.optim.build import OPTIMIZERS, build_optimizer

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 65, (8, 64), generator=gen)
    y = torch.randint(0, 65, (8, 64), generator=gen)
    lr = OPTIMIZERS[name].default_lr * 0.1
    updates, losses = {}, []
    for device in ("cpu", DEVICE):
        model = _small_gpt().to(device)
        opt = build_optimizer(model, name, lr=lr, adamw_lr=3e-4, head=["lm_head.weight"])
        start = [p.detach().clone() for p in model.parameters()]
        steps = 1 if device == "cpu" else 3
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            # The compared first step in float32 on both devices (bf16 gradients would flip the
            # signs of small entries, and AdamW's and sign descent's first steps are signs).
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == DEVICE and step > 0):
                loss = nn.functional.cross_entropy(model(x.to(device)).float().flatten(0, 1), y.to(device).flatten())
            loss.backward()
            opt.step()
            if device == DEVICE:
                losses.append(loss.item())
            if step == 0:
                updates[device] = torch.cat([(p.detach() - s).flatten().double().cpu() for p, s in zip(model.parameters(), start)])
        if device == DEVICE:
            for p, s in zip(model.parameters(), start):
                assert p.is_cuda and torch.isfinite(p).all()
                assert not torch.equal(p, s), "a weight did not move"
            for state in opt.state.values() if hasattr(opt, "state") else []:
                for v in state.values():
                    if torch.is_tensor(v) and v.numel() > 1:
                        assert v.is_cuda, "optimizer state left on the CPU"
    cos = (updates["cpu"] @ updates[DEVICE] / (updates["cpu"].norm() * updates[DEVICE].norm())).item()
    assert math.isfinite(cos) and cos >= 0.9, f"{name}: cosine of the CPU and CUDA first updates {cos:.3f}"
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        final = nn.functional.cross_entropy(model(x.to(DEVICE)).float().flatten(0, 1), y.to(DEVICE).flatten()).item()
    assert final < losses[0], f"{name}: loss {losses[0]:.4f} -> {final:.4f} on a fixed batch"

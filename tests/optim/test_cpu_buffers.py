"""The CPU path's reused buffers (MatrixOptimizer.scratch): Muon orthogonalises one matrix at a time
into buffers kept between steps, and the Nesterov momentum is written into kept buffers. Results
must equal the batched, freshly allocated computation, also when shapes interleave, a gradient
comes and goes, and a parameter is stored transposed or as a conv weight."""

import math

import pytest
import torch
from torch import nn

from steepest import Muon, Neon
from steepest.directions.msgn import msgn_polynomial
from steepest.directions.spectral import spectral_scale

SHAPES = [(512, 256), (256, 1024), (256, 256), (256, 256), (256, 64, 3, 3), (128, 128)]  # the last one batched (CPU_ONE_AT_A_TIME)


def reference_muon_steps(W0, grads, lr, mu, dtype):
    """Per parameter: B ← lerp(B, G, 1 − μ), M = lerp(G, B, μ), W ← W − lr·s·msgn(M) by the
    batched path (a (1, m, n) stack, new tensors) in ``dtype``; a ``None`` gradient skips."""
    W = [w.clone() for w in W0]
    B = [torch.zeros_like(w) for w in W0]
    out = []
    for step in grads:
        for i, g in enumerate(step):
            if g is None:
                continue
            B[i] = torch.lerp(B[i], g, 1 - mu)
            M = torch.lerp(g, B[i], mu)
            m, n = M.shape[0], math.prod(M.shape[1:])
            D = msgn_polynomial(M.reshape(1, m, n), "polar_express", 5, dtype)[0]
            W[i] = W[i] - lr * spectral_scale((m, n), "original") * D.reshape(M.shape)
        out.append([w.clone() for w in W])
    return out


@pytest.mark.parametrize("dtype,param_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_muon_cpu_buffers_match_the_batched_fresh_computation(dtype, param_dtype):
    gen = torch.Generator().manual_seed(0)
    W0 = [(torch.randn(s, generator=gen) / math.sqrt(math.prod(s[1:]))).to(param_dtype) for s in SHAPES]
    # gradients that come and go: parameter 1 skips step 1, parameter 3 steps 0 and 2
    grads = [[None if (i, t) in {(1, 1), (3, 0), (3, 2)} else torch.randn(s, generator=gen).to(param_dtype) for i, s in enumerate(SHAPES)] for t in range(4)]
    params = [nn.Parameter(w.clone()) for w in W0]
    opt = Muon(params, lr=0.02, momentum=0.9, msgn_dtype=dtype)
    for t, step in enumerate(grads):
        for p, g in zip(params, step):
            p.grad = None if g is None else g.clone()
        opt.step()
        for p, want in zip(params, reference_muon_steps(W0, grads[: t + 1], 0.02, 0.9, dtype)[-1]):
            # the same products on both paths; a bf16 iteration allows its rounding; bf16 weights a bf16
            # ulp of the weights (that case checks the path on bf16 parameters; float32 checks values)
            tol = 1e-6 if dtype == torch.float32 else 2e-3 * 0.02 if param_dtype == torch.float32 else 2**-7 * float(want.abs().max())
            torch.testing.assert_close(p.detach(), want, rtol=0, atol=tol)
    one_at_a_time = any(key[0] == "msgn" for key in opt._scratch)
    assert one_at_a_time == (dtype == torch.bfloat16), "one at a time for a bf16 iteration, batched for float32"


def test_muon_transposed_group_on_cpu_buffers():
    """A weight stored (in, out) (HF Conv1D) takes the update of its (out, in) transpose, on the
    one-at-a-time path (bf16 iteration)."""
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(1024, 256, generator=gen) / 16
    G = [torch.randn(1024, 256, generator=gen) for _ in range(2)]
    a, b = nn.Parameter(W.clone()), nn.Parameter(W.mT.contiguous())
    opt_a = Muon([a], lr=0.02, msgn_dtype=torch.bfloat16)
    opt_b = Muon([dict(params=[b], transposed=True)], lr=0.02, msgn_dtype=torch.bfloat16)
    for g in G:
        a.grad, b.grad = g.clone(), g.mT.contiguous()
        opt_a.step()
        opt_b.step()
        torch.testing.assert_close(b.detach().mT, a.detach(), rtol=0, atol=1e-6)
    assert any(key[0] == "msgn" for key in opt_b._scratch)


def test_neon_nuclear_reused_stack_matches_fresh():
    """Neon's momentum stack reuses a buffer on CPU; two optimizers stepping different data with
    the same shapes must not see each other's values, and a fresh optimizer on the same data
    gives the same weights."""
    gen = torch.Generator().manual_seed(2)
    shapes = [(256, 128)] * 3
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(3)]
    make = lambda: [nn.Parameter(torch.zeros(s)) for s in shapes]  # noqa: E731
    p1, p2 = make(), make()
    o1, o2 = Neon(p1, lr=0.1, mode="nuclear"), Neon(p2, lr=0.1, mode="nuclear")
    for step in grads:
        for p, q, g in zip(p1, p2, step):
            p.grad, q.grad = g.clone(), -g.clone()
        o1.step()
        o2.step()
    for p, q in zip(p1, p2):
        torch.testing.assert_close(q.detach(), -p.detach(), rtol=1e-5, atol=1e-6)


def test_release_buffers_frees_them_and_the_next_step_is_unchanged():
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(512, 256, generator=gen) / 16
    G = [torch.randn(512, 256, generator=gen) for _ in range(3)]
    a, b = nn.Parameter(W.clone()), nn.Parameter(W.clone())
    opt_a, opt_b = Muon([a], lr=0.02, msgn_dtype=torch.bfloat16), Muon([b], lr=0.02, msgn_dtype=torch.bfloat16)
    for t, g in enumerate(G):
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
        if t == 0:
            assert opt_b._scratch
            opt_b.release_buffers()
            assert not getattr(opt_b, "_scratch", None)
    torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=0)

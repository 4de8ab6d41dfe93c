"""The CPU path's reused buffers (MatrixOptimizer.scratch): Muon orthogonalises one matrix at a time
into buffers kept between steps, and the Nesterov momentum is written into kept buffers. Results
must equal the batched, freshly allocated computation, also when shapes interleave, a gradient
comes and goes, and a parameter is stored transposed or as a conv weight. The CPU step runs unit
by unit (momentum just before its direction, applied right after): bit for bit the values of every
direction first, with kept buffers bounded by the largest unit."""

import math

import pytest
import torch
from torch import nn

from steepest import Dion, Muon, Neon, NorMuon, Shampoo
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


# --- the streamed CPU step (MatrixOptimizer._step_units): bounded buffers, unchanged values ----------

LAYOUT = [(512, 256), (512, 256), (256, 1024), (256, 64, 3, 3), (128, 128), (128, 128)]


def _groups(gen, param_dtype=torch.float32):
    """Plain, transposed (stored (in, out)) and expert-bank (matrix_blocks) parameters."""
    plain = [nn.Parameter((torch.randn(s, generator=gen) / math.sqrt(math.prod(s[1:]))).to(param_dtype)) for s in LAYOUT]
    stored_in_out = nn.Parameter((torch.randn(256, 512, generator=gen) / 16).to(param_dtype))
    experts = nn.Parameter((torch.randn(3, 256, 256, generator=gen) / 16).to(param_dtype))
    return [dict(params=plain), dict(params=[stored_in_out], transposed=True), dict(params=[experts], matrix_blocks=3)]


OPTIMIZERS = {
    "muon-bf16": lambda g: Muon(g, lr=0.02, msgn_dtype=torch.bfloat16, nonfinite="skip"),
    "muon-float32": lambda g: Muon(g, lr=0.02, msgn_dtype=torch.float32, nonfinite="skip"),
    "muon-cautious-wd": lambda g: Muon(g, lr=0.02, msgn_dtype=torch.bfloat16, weight_decay=0.1, cautious_weight_decay=True, nonfinite="skip"),
    "muon-classical": lambda g: Muon(g, lr=0.02, nesterov=False, msgn_dtype=torch.bfloat16, weight_decay=0.1, nonfinite="skip"),
    "normuon": lambda g: NorMuon(g, lr=0.02, msgn_dtype=torch.bfloat16, nonfinite="skip"),
    "neon-nuclear": lambda g: Neon(g, lr=0.1, mode="nuclear", weight_decay=0.1, nonfinite="skip"),
    "neon-fstar": lambda g: Neon(g, lr=0.1, mode="fstar", nonfinite="skip"),
    "neon-nuclear-ef": lambda g: Neon(g, lr=0.1, mode="nuclear", nesterov=False, error_feedback=True, nonfinite="skip"),
    "dion": lambda g: Dion(g, lr=0.02, nonfinite="skip"),
    "shampoo": lambda g: Shampoo(g, lr=1e-3, update_every=2, nonfinite="skip"),
}


def _run(make, streamed: bool, steps: int = 4, param_dtype=torch.float32):
    """Steps with gradients that come and go and one NaN gradient (a skipped step); the optimizer and
    its parameters after them."""
    groups = _groups(torch.Generator().manual_seed(4), param_dtype)
    opt = make(groups)
    opt.stream_cpu_steps = streamed
    params = [p for g in opt.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(5)
    for t in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (i + t) % 4 == 3 else torch.randn(p.shape, generator=gen).to(p.dtype)
        if t == 2:
            params[0].grad[0, 0] = float("nan")
        opt.step()
    return opt, params


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_streamed_step_is_bit_identical_to_all_directions_first(name):
    """Unit by unit (momentum just before its direction, the direction applied right after) gives
    the same bits as forming every momentum and direction first: the arithmetic is the same."""
    a, pa = _run(OPTIMIZERS[name], streamed=True)
    b, pb = _run(OPTIMIZERS[name], streamed=False)
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)
    for p, q in zip(pa, pb):
        sa, sb = a.state[p], b.state[q]
        assert sa.keys() == sb.keys()
        for key in sa:
            if isinstance(sa[key], torch.Tensor):
                assert torch.equal(sa[key], sb[key]), key


def test_streamed_step_bf16_parameters_bit_identical():
    a, pa = _run(OPTIMIZERS["muon-bf16"], streamed=True, steps=3, param_dtype=torch.bfloat16)
    b, pb = _run(OPTIMIZERS["muon-bf16"], streamed=False, steps=3, param_dtype=torch.bfloat16)
    assert all(torch.equal(p, q) for p, q in zip(pa, pb))


def _kept_bytes(opt) -> int:
    return sum(t.numel() * t.element_size() for t in opt.__dict__.get("_scratch", {}).values())


def _layers(count: int, gen) -> list[nn.Parameter]:
    """``count`` layers of a small transformer's hidden matrices (fused qkv, out, MLP up, down) at width 256."""
    d = 256
    return [nn.Parameter(torch.randn(s, generator=gen) / math.sqrt(s[1])) for _ in range(count) for s in [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)]]


def _step_layers(make, count: int, streamed: bool = True):
    gen = torch.Generator().manual_seed(6)
    params = _layers(count, gen)
    opt = make(params)
    opt.stream_cpu_steps = streamed
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return opt, params


def test_muon_kept_buffers_are_one_matrix_whatever_the_depth():
    """Muon one matrix at a time (bf16 on a CPU): the kept bytes are a fixed number of copies of the
    largest matrix, whatever the number of layers: the float32 momentum and direction workspaces
    (4 + 4 bytes an entry), the bf16 cast and two iterates (3·2 bytes) and the two bf16 Gram-sized
    products (2·2 bytes an entry of a min(m, n)² matrix)."""
    make = lambda p: Muon(p, lr=0.02, msgn_dtype=torch.bfloat16)  # noqa: E731
    kept = [_kept_bytes(_step_layers(make, count)[0]) for count in (1, 3)]
    largest, side = 4 * 256 * 256, 256
    bound = (4 + 4 + 3 * 2) * largest + 2 * 2 * side * side
    assert kept[0] == kept[1] <= bound
    unbounded = _kept_bytes(_step_layers(make, 3, streamed=False)[0])
    weights = 3 * 4 * (3 + 1 + 4 + 4) * 256 * 256
    assert unbounded > weights > 2 * kept[1]  # all directions first: a momentum and a direction per matrix


BATCHED = [lambda p: Muon(p, lr=0.02, msgn_dtype=torch.float32), lambda p: Neon(p, lr=0.1, mode="nuclear")]


@pytest.mark.parametrize("make", BATCHED, ids=["muon-float32", "neon-nuclear"])
def test_batched_kept_buffers_are_the_largest_bucket(make):
    """A batched direction (a float32 iteration, Neon): the momentum workspace holds the largest
    bucket (same-shape matrices), not every matrix."""
    opt, params = _step_layers(make, 3)
    largest_bucket = 3 * 4 * 4 * 256 * 256  # 3 layers × the (1024, 256) matrix, float32
    assert _kept_bytes(opt) <= 2 * largest_bucket
    assert _kept_bytes(opt) < sum(p.numel() * p.element_size() for p in params)


@pytest.mark.parametrize("name", ["neon-fstar", "neon-fstar-ef"])
def test_fstar_kept_buffers_are_one_largest_bucket(name):
    """Neon F* stacks each batch into one workspace (with Nesterov momentum, the momenta are
    already back to back there and stack without a copy), and returns factors, not an m×n
    direction: what it keeps is the largest bucket once (it was one stack per shape plus the
    Nesterov momenta: 1.33 of the weights on two GPT-2-small layers, docs/performance.md)."""
    from ..registered import registration

    r = registration(name)
    opt, params = _step_layers(lambda p: r.factory(p, lr=0.1, **r.options), 3)
    largest_bucket = 3 * 4 * 4 * 256 * 256  # 3 layers × the (1024, 256) matrix, float32
    assert _kept_bytes(opt) <= largest_bucket

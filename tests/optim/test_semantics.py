"""torch.optim semantics: param groups, schedulers, closures, zero_grad, None gradients, batching,
conv weights, and no host reads inside step() beyond the documented ones."""

import importlib
import math

import pytest
import torch
from torch import nn

import steepest
from steepest import Muon, Neon
from steepest.optim.registry import OPTIMIZERS

from ..registered import registered

msgn_module = importlib.import_module("steepest.directions.msgn")  # the package exports the function msgn

# Every registered matrix optimizer of ours, built from its registration (class and fixed options).
MATRIX_OPTIMIZERS = {name: OPTIMIZERS[name].build for name in registered(matrix=True, peer=False)}


def params(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def set_grads(ps, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen)


@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
def test_batched_equals_one_optimizer_per_matrix(name):
    """Same-shape matrices share one batched call; the result equals separate optimizers'."""
    shapes = [(6, 9), (6, 9), (9, 6), (6, 9), (4, 2, 3, 3)]
    together = params(shapes)
    alone = [nn.Parameter(p.detach().clone()) for p in together]
    opt = MATRIX_OPTIMIZERS[name](together, lr=0.01)
    singles = [MATRIX_OPTIMIZERS[name]([p], lr=0.01) for p in alone]
    for step in range(4):
        set_grads(together, step)
        set_grads(alone, step)
        opt.step()
        for o in singles:
            o.step()
    for p, q in zip(together, alone):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
def test_none_gradient_is_skipped(name):
    ps = params([(5, 7)] * 3)
    before = ps[1].detach().clone()
    opt = MATRIX_OPTIMIZERS[name](ps, lr=0.01)
    set_grads(ps, 0)
    ps[1].grad = None
    opt.step()
    assert torch.equal(ps[1], before)
    assert ps[1] not in opt.state
    ref = params([(5, 7)] * 3)
    o2 = MATRIX_OPTIMIZERS[name]([ref[0]], lr=0.01)
    set_grads(ref, 0)
    o2.step()
    torch.testing.assert_close(ps[0], ref[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
def test_param_groups_have_their_own_lr(name):
    a, b = params([(5, 7), (5, 7)])
    a0, b0 = a.detach().clone(), b.detach().clone()
    opt = MATRIX_OPTIMIZERS[name]([{"params": [a], "lr": 0.02}, {"params": [b], "lr": 0.0}], lr=0.01)
    a.grad = torch.ones_like(a) + torch.randn_like(a)
    b.grad = a.grad.clone()
    opt.step()
    assert not torch.equal(a, a0) and torch.equal(b, b0)


@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
def test_scheduler_and_closure(name):
    (w,) = params([(6, 8)])
    x = torch.randn(10, 8)
    opt = MATRIX_OPTIMIZERS[name]([w], lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    def closure():
        opt.zero_grad()
        loss = (x @ w.T).square().mean()
        loss.backward()
        return loss

    w0 = w.detach().clone()
    first = opt.step(closure)
    assert first.item() == pytest.approx((x @ w0.T).square().mean().item())  # the closure's loss, before the step
    assert not torch.equal(w, w0)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    opt.zero_grad()
    assert w.grad is None


def test_lr_as_scalar_tensor():
    a, b = params([(5, 7), (5, 7)])
    b.data.copy_(a.data)
    oa, ob = Muon([a], lr=torch.tensor(0.01)), Muon([b], lr=0.01)
    for s in range(3):
        a.grad = torch.randn(5, 7, generator=torch.Generator().manual_seed(s))
        b.grad = a.grad.clone()
        oa.step()
        ob.step()
    torch.testing.assert_close(a, b)


def test_muon_conv_weight_uses_flattened_shape():
    (w,) = params([(8, 4, 3, 3)])
    w0 = w.detach().clone()
    set_grads([w], 0)
    Muon([w], lr=0.1, momentum=0.0, msgn_method="svd", scale="rms_to_rms").step()
    D = (w0 - w.detach()) / 0.1
    flat = D.reshape(8, 36)
    s = torch.linalg.svdvals(flat.double())
    torch.testing.assert_close(s, torch.full_like(s, math.sqrt(8 / 36)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
def test_no_host_reads_in_step(name, monkeypatch):
    """With nonfinite="skip" (or "ignore"), step() reads no tensor value on the host, except the
    CPU step counters, for Neon F*, the previous step's rank (a non-blocking copy on CUDA), and
    msgn's range test of the norms, which runs on CPUs only (asserted).
    Shampoo reads one condition flag on its root-refresh steps only, so we test between them."""
    ps = params([(6, 9), (6, 9), (9, 6)])
    kw = {"update_every": 1000} if name == "shampoo" else {}
    opt = MATRIX_OPTIMIZERS[name](ps, lr=0.01, nonfinite="skip", **kw)
    set_grads(ps, 0)
    opt.step()  # first step: state creation, Shampoo's first roots
    allowed = {id(s["step"]) for s in opt.state.values()}
    if isinstance(opt, Neon):
        allowed |= {id(v[0]) for v in opt._pending_rank.values()}
    reads = []
    exempt = []  # inside msgn's CPU-only range test of the norms (no such read on other devices)

    def spy(method):
        original = getattr(torch.Tensor, method)

        def wrapper(self, *a, **k):
            if id(self) not in allowed and not exempt:
                reads.append((method, tuple(self.shape)))
            return original(self, *a, **k)

        return wrapper

    norms_in_range = msgn_module._norms_in_range

    def cpu_only(norm, method):
        assert norm.device.type == "cpu"
        exempt.append(True)
        try:
            return norms_in_range(norm, method)
        finally:
            exempt.pop()

    monkeypatch.setattr(msgn_module, "_norms_in_range", cpu_only)
    for method in ("item", "__bool__", "__int__", "__float__", "tolist", "__index__"):
        monkeypatch.setattr(torch.Tensor, method, spy(method))
    set_grads(ps, 1)
    opt.step()
    monkeypatch.undo()
    assert reads == []


@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
def test_nonfinite_raise_names_the_parameter(name):
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3))
    opt = MATRIX_OPTIMIZERS[name]([(n, p) for n, p in model.named_parameters() if p.ndim == 2], lr=0.01)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model[1].weight.grad[0, 0] = float("nan")
    with pytest.raises(steepest.NonFiniteGradientError, match=r"'1.weight'.*nonfinite='skip'"):
        opt.step()


@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
def test_nonfinite_skip_leaves_everything_unchanged(name):
    ps = params([(5, 7), (5, 7)])
    opt = MATRIX_OPTIMIZERS[name](ps, lr=0.01, nonfinite="skip", weight_decay=0.1)
    set_grads(ps, 0)
    opt.step()
    snapshot = [p.detach().clone() for p in ps]
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in ps]
    set_grads(ps, 1)
    ps[0].grad[1, 1] = float("inf")
    opt.step()
    for p, s, b in zip(ps, snapshot, bufs):
        assert torch.equal(p, s)
        assert torch.equal(opt.state[p]["momentum_buffer"], b)
    set_grads(ps, 2)
    opt.step()
    assert all(torch.isfinite(p).all() for p in ps)

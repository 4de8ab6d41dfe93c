"""Checkpoint resume is exact: N steps, save, reload into a fresh model and optimizer, K more steps:
every loss equals (==, not close) the uninterrupted run's. For every registered optimizer,
including the combined matrix + AdamW optimizer that build_optimizer returns."""

import io

import pytest
import torch
from torch import nn

import steepest
from steepest.optim.build import OPTIMIZERS

from ..registered import registered
from .conftest import TinyConvNet, TinyLM, conv_batch, lm_batch

OPTIONS = {"newton-muon": {"refresh_every": 3}, "shampoo": {"update_every": 3}}
OURS = registered()  # every registered optimizer but those of optional dependency groups (the third-party peers)


def train(model, opt, batch_fn, steps, start=0, loss_fn=nn.functional.cross_entropy):
    losses = []
    for t in range(start, start + steps):
        x, y = batch_fn(t)
        out = model(x)
        loss = loss_fn(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def build(name, make_model):
    torch.manual_seed(0)
    model = make_model()
    return model, steepest.build_optimizer(model, name, lr=OPTIMIZERS[name].default_lr * 0.5, **OPTIONS.get(name, {}))


@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize("arch", ["conv", "lm"])
def test_resume_is_exact(name, arch):
    if arch == "conv" and name == "torch-muon":
        pytest.skip("torch.optim.Muon takes 2-D parameters only")
    make_model, batch_fn = (TinyConvNet, conv_batch) if arch == "conv" else (TinyLM, lm_batch)
    model, opt = build(name, make_model)
    straight = train(model, opt, batch_fn, 8)

    model, opt = build(name, make_model)
    first = train(model, opt, batch_fn, 4)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    del model, opt
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model, opt = build(name, make_model)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    second = train(model, opt, batch_fn, 4, start=4)
    assert first + second == straight


@pytest.mark.parametrize("mode", ["nuclear", "fstar"])
def test_neon_state_holds_warm_start(mode):
    model, opt = build(f"neon-{mode}", TinyLM)
    train(model, opt, lm_batch, 2)
    neon = opt.optimizers[0]
    state = neon.state_dict()["state"]
    assert all("basis" in s for s in state.values())
    if mode == "fstar":
        assert all(s["rank"].dtype == torch.int64 for s in state.values())


def test_scheduler_reaches_children_after_load(lm_model):
    opt = steepest.build_optimizer(lm_model, "muon", lr=0.02, adamw_lr=1e-3)
    x, y = lm_batch(0)
    nn.functional.cross_entropy(lm_model(x).reshape(-1, 17), y.reshape(-1)).backward()
    opt.step()
    state = opt.state_dict()
    fresh = steepest.build_optimizer(lm_model, "muon", lr=0.02, adamw_lr=1e-3)
    fresh.load_state_dict(state)
    sched = torch.optim.lr_scheduler.LambdaLR(fresh, lambda step: 0.5)
    assert [g["lr"] for o in fresh.optimizers for g in o.param_groups] == [0.01, 0.0005]
    assert all(a is b for a, b in zip(fresh.param_groups, [g for o in fresh.optimizers for g in o.param_groups]))
    del sched

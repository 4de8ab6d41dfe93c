"""The contract PyTorch checks for its own optimizers, for every registered matrix optimizer of
ours (the list comes from the registry): checkpoints of other dtypes and of older tools, tensor
learning rates of every 1-element shape, deepcopy and pickle, empty weights, the order of input
checks, steps without gradients, hooks, schedulers, param groups, and channels_last weights.

Sizes: a 256×128 Linear weight and a 512×64×3×3 conv (512 channels). Tolerances: the compared runs
do the same float32 arithmetic (same machine, same kernels) except where stated, so 1e-6 relative
bounds reordering-free float32 rounding; a tensor lr differs from a float lr by the rounding of
``lr·scale`` to float32 (6e-8 relative per step), 1e-5 after 3 steps.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from steepest.optim.muon import Muon

from ..registered import registered, registration

NAMES = registered(matrix=True, peer=False)


def make(name: str, module: nn.Module, params=None, **kw):
    """Optimizer ``name`` over ``params`` (default: the module's weight), the module passed as
    ``model=`` where the optimizer needs one (Newton-Muon's input statistics)."""
    r = registration(name)
    if r.needs_model:
        kw["model"] = module
    return r.build([module.weight] if params is None else params, **kw)


def float32_iteration(name: str) -> dict:
    """Muon-family classes iterate in bf16 on CPUs with native bf16 (and CUDA), where a 1e-7 change
    of the input can flip a bf16 rounding (4e-3 relative): the comparisons of runs that differ by
    float32 rounding fix the iteration to float32."""
    factory = registration(name).factory
    return {"msgn_dtype": torch.float32} if isinstance(factory, type) and issubclass(factory, Muon) else {}


def linear(dtype=torch.float32, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(128, 256, bias=False).to(dtype)


def train(opt, module: nn.Module, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, module.in_features, generator=gen).to(module.weight.dtype)
        opt.zero_grad()
        module(x).square().mean().backward()
        opt.step()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("load_dtype", [torch.bfloat16, torch.float32])
def test_resume_into_parameters_of_another_dtype(name, load_dtype):
    """A checkpoint saved in one dtype resumes on a copy of the model in another: the momentum
    follows the parameter's dtype, and the step runs."""
    save_dtype = torch.float32 if load_dtype == torch.bfloat16 else torch.bfloat16
    a = linear(save_dtype)
    opt = make(name, a)
    train(opt, a, 2)
    b = linear(load_dtype)
    b.weight.data.copy_(a.weight.data)
    opt_b = make(name, b)
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))
    train(opt_b, b, 2, seed=2)
    state = opt_b.state[b.weight]
    assert state["momentum_buffer"].dtype == load_dtype
    assert torch.isfinite(b.weight).all()


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_with_plain_number_step_and_missing_state(name):
    a = linear()
    opt = make(name, a)
    train(opt, a, 2)
    sd = copy.deepcopy(opt.state_dict())
    for s in sd["state"].values():
        s["step"] = 2  # as older checkpoints and other tools write it
    opt2 = make(name, a)
    opt2.load_state_dict(sd)
    train(opt2, a, 1)
    assert int(opt2.state[a.weight]["step"]) == 3
    opt3 = make(name, a)
    opt3.load_state_dict({"state": {}, "param_groups": copy.deepcopy(sd["param_groups"])})  # no state yet
    train(opt3, a, 1)
    assert int(opt3.state[a.weight]["step"]) == 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_tensor_lr_of_every_one_element_shape_matches_float_lr(name, shape):
    lr = registration(name).default_lr * 0.5
    results = []
    for value in (lr, torch.full(shape, lr)):
        m = linear()
        opt = make(name, m, lr=value, **float32_iteration(name))
        train(opt, m, 3)
        results.append(m.weight.detach().clone())
    assert rel(results[1], results[0]) <= 1e-5


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_then_step_matches_the_original(name, how):
    m = linear()
    opt = make(name, m)
    train(opt, m, 2)
    if registration(name).needs_model and how == "pickle":  # its hooks are closures: a hooked model does not pickle
        opt.remove_hooks()
        bundle = pickle.loads(pickle.dumps((m, opt)))
        opt.attach(m)
    else:
        bundle = copy.deepcopy((m, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((m, opt)))
    m2, opt2 = bundle
    if registration(name).needs_model:  # the copy has no hooks on any model (they are functions of the original's modules)
        assert opt2.attach(m2) == 1
    train(opt, m, 2, seed=5)
    train(opt2, m2, 2, seed=5)
    # Newton-Muon's copy lost the input sums collected since its last refresh: its next refresh differs
    tol = 1e-6 if not registration(name).needs_model else 1e-1
    assert rel(m2.weight.detach(), m.weight.detach()) <= tol
    opt2.load_state_dict(opt.state_dict())  # and a load after the copy works


@pytest.mark.parametrize("name", NAMES)
def test_empty_weight_is_a_no_op_and_no_gradient_changes_nothing(name):
    e = nn.Linear(16, 0, bias=False)
    opt = make(name, e)
    e.weight.grad = torch.zeros(0, 16)
    opt.step()
    m = linear()
    opt = make(name, m)
    before = m.weight.detach().clone()
    opt.step()  # no gradient yet
    assert torch.equal(m.weight.detach(), before) and not opt.state[m.weight]


@pytest.mark.parametrize("name", NAMES)
def test_bad_lr_is_reported_before_bad_params(name):
    cls = registration(name).factory
    with pytest.raises(ValueError, match="lr must be"):
        cls(None, lr=-1.0, **registration(name).options)


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_own_lr_and_weight_decay_hooks_and_scheduler(name):
    a, b = linear(seed=0), linear(seed=1)
    reg = registration(name)
    kw = {"model": nn.ModuleList([a, b])} if reg.needs_model else {}
    lr = reg.default_lr
    opt = reg.build([{"params": [a.weight]}, {"params": [b.weight], "lr": lr * 0.1, "weight_decay": 0.1}], lr=lr, **kw)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        opt.zero_grad()
        x = torch.randn(16, 128, generator=gen)
        (a(x).square().mean() + b(x).square().mean()).backward()
        opt.step()
        sched.step()
    assert calls == ["pre", "post", "pre", "post"]
    assert opt.param_groups[0]["lr"] == pytest.approx(lr * 0.25) and opt.param_groups[1]["lr"] == pytest.approx(lr * 0.025)
    assert opt.param_groups[1]["weight_decay"] == 0.1
    restored = reg.build([{"params": [a.weight]}, {"params": [b.weight]}], lr=lr, **kw)
    restored.load_state_dict(opt.state_dict())
    assert restored.param_groups[1]["lr"] == pytest.approx(lr * 0.025)


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_conv_steps_as_contiguous(name):
    """A 512-channel conv, one copy channels_last: the same gradients give the same weights
    (in-place state updates must reach buffers of any strides)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 512, 3, bias=False)
    other = copy.deepcopy(conv).to(memory_format=torch.channels_last)
    assert other.weight.is_contiguous(memory_format=torch.channels_last) and not other.weight.is_contiguous()
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(conv.weight.shape, generator=gen) for _ in range(4)]
    results = []
    for c in (conv, other):
        opt = make(name, c, **float32_iteration(name))
        for g in grads:
            c.weight.grad = g.clone().contiguous(memory_format=torch.channels_last) if c is other else g.clone()
            opt.step()
        results.append(c.weight.detach().clone())
        state = opt.state[c.weight]["momentum_buffer"]
        assert state.shape == c.weight.shape
    assert rel(results[1], results[0]) <= 1e-6

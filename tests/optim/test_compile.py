"""compile=True (torch.compile, fullgraph) gives the eager path's results.

Tolerance: 1e-5 relative: the compiler fuses and reorders float32 arithmetic (measured 1.3e-6 on
msgn); the bucket structure, states and host logic are the same."""

import inspect

import pytest
import torch
from torch import nn

from steepest.optim.muon import Muon
from steepest.optim.registry import OPTIMIZERS

from ..registered import registered

# Options of some cases (each runs at its registered default lr otherwise).
OPTIONS = {
    "muon": dict(lr=0.02, msgn_dtype=torch.float32),  # the float32 tolerance below (the default is bf16 on CPUs with native bf16)
    "newton-muon": dict(msgn_dtype=torch.float32),  # likewise
    "neon-nuclear": dict(lr=0.5),
    "neon-fstar": dict(lr=0.5),
    "shampoo": dict(lr=1e-3, update_every=2),
}


def _case(name: str):
    options = {"lr": OPTIMIZERS[name].default_lr, **OPTIONS.get(name, {})}
    factory = OPTIMIZERS[name].factory
    if isinstance(factory, type) and (issubclass(factory, Muon) or "msgn_dtype" in inspect.signature(factory).parameters):
        options["msgn_dtype"] = torch.float32  # every class that iterates msgn: the float32 tolerance below
    return lambda ps, **k: OPTIMIZERS[name].build(ps, **options, **k)


# One registered name per class and mode (the scale, sigma and error-feedback variants compile the same steps).
CASES = {name: _case(name) for name in registered(matrix=True, peer=False, one_per_kind=True)}


@pytest.mark.parametrize("name", CASES)
def test_compiled_equals_eager(name):
    torch._dynamo.reset()
    shapes = [(16, 24), (16, 24), (24, 16)]
    gen = torch.Generator().manual_seed(0)
    eager = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    compiled = [nn.Parameter(p.detach().clone()) for p in eager]
    a = CASES[name](eager)
    b = CASES[name](compiled, compile=True)
    for step in range(3):
        g = torch.Generator().manual_seed(10 + step)
        for p, q in zip(eager, compiled):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q in zip(eager, compiled):
        assert (p - q).norm() <= 1e-5 * p.norm()
    assert b._compiled  # the compiled path really ran


@pytest.mark.parametrize("name", ["dion", "neon-nuclear"])
def test_whole_step_compiles_to_one_graph(name):
    """``torch.compile`` of ``opt.step()`` itself, as the README shows (a tensor lr,
    ``nonfinite="skip"``): one graph, no break, for the optimizers whose batches are stacked and
    applied as factors (a host read in the stacking or the low-rank update would break it; issue 25 §3)."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in [(16, 24), (16, 24), (24, 16)]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt = OPTIMIZERS[name].build(params, lr=torch.tensor(0.01), nonfinite="skip", **OPTIMIZERS[name].options)
    opt.step()  # eager first step: state created outside the graph

    def step():
        opt.step()

    explained = torch._dynamo.explain(step)()
    assert explained.graph_break_count == 0, [str(r)[:200] for r in explained.break_reasons]
    assert explained.graph_count == 1

"""On real data (sklearn's digits, an MLP, 300 steps on CPU) every optimizer reduces the loss well
below its start, and Muon beats SGD at equal steps (each at its registered default lr)."""

import pytest
import torch
from torch import nn

import steepest

from ..registered import registered

sklearn = pytest.importorskip("sklearn.datasets")
OURS = registered()  # every registered optimizer but those of optional dependency groups (the third-party peers)
LRS = {"neon-nuclear": 3.0, "neon-fstar": 3.0, "neon-nuclear-ef": 3.0, "neon-fstar-ef": 3.0}  # sigma="keep": the step scales with σ₁ of the momentum, small here


@pytest.fixture(scope="module")
def digits():
    X, y = sklearn.load_digits(return_X_y=True)
    return torch.tensor(X / 16, dtype=torch.float32), torch.tensor(y)


def train(name, X, y, steps=300):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = steepest.build_optimizer(model, name, lr=LRS.get(name))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        start = nn.functional.cross_entropy(model(X), y).item()
    for _ in range(steps):
        idx = torch.randint(0, len(X), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return start, nn.functional.cross_entropy(model(X), y).item()


@pytest.mark.parametrize("name", OURS)
def test_loss_falls_well_below_start(name, digits):
    start, end = train(name, *digits)
    assert end < 0.25 * start, (start, end)


def test_muon_beats_sgd(digits):
    assert train("muon", *digits)[1] < train("sgd", *digits)[1]

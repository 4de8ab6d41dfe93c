"""Muon(msgn_method="newton_schulz", msgn_dtype=bf16, scale="original") takes exactly
torch.optim.Muon's steps (torch.equal on the weights), on a real model's 2-D weights."""

import pytest
import torch
from torch import nn

from steepest import Muon

pytestmark = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("width", [48, 256])  # 256: on a CPU, the one-matrix-at-a-time path into kept buffers
def test_matches_torch_optim_muon(nesterov, weight_decay, width):
    d = width

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, d, bias=False), nn.ReLU(), nn.Linear(d, d, bias=False), nn.ReLU(), nn.Linear(d, 2 * d, bias=False))

    ours, theirs = model(), model()
    kw = dict(lr=0.02, momentum=0.95, nesterov=nesterov, weight_decay=weight_decay)
    a = Muon(ours.parameters(), msgn_method="newton_schulz", msgn_dtype=torch.bfloat16, scale="original", **kw)
    b = torch.optim.Muon(theirs.parameters(), adjust_lr_fn="original", **kw)
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        x = torch.randn(32, 64, generator=gen)
        for net, opt in ((ours, a), (theirs, b)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
        for p, q in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(p, q)

"""Resume is exact for low-precision models too, at a realistic width (sides of 128 and 512).

torch's ``Optimizer.load_state_dict`` casts floating-point state to its parameter's dtype, which
turned a bf16 model's float32 statistics and integer ranks into bf16 (Shampoo, Newton-Muon and
Neon then failed or drifted after a resume). Every optimizer must resume a bf16 (and float16)
model bit for bit, and keep each state tensor's dtype across the save/load."""

import io

import pytest
import torch
from torch import nn

import steepest
from steepest.optim.build import OPTIMIZERS

from ..registered import registered

OPTIONS = {"newton-muon": {"refresh_every": 2}, "shampoo": {"update_every": 2}}
OURS = registered()  # every registered optimizer but those of optional dependency groups (the third-party peers)
VOCAB = 96


class MidLM(nn.Module):
    """Embedding, a 128→512→128 MLP, two same-shape 128×128 matrices (one bucket), a head."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, VOCAB, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        x = x + self.q(x) * torch.sigmoid(self.k(x))
        x = x + self.down(torch.relu(self.up(x)))
        return self.lm_head(self.norm(x))


def batch(step: int):
    gen = torch.Generator().manual_seed(7000 + step)
    return torch.randint(0, VOCAB, (4, 16), generator=gen), torch.randint(0, VOCAB, (4, 16), generator=gen)


def build(name: str, dtype: torch.dtype):
    torch.manual_seed(0)
    model = MidLM().to(dtype)
    return model, steepest.build_optimizer(model, name, lr=OPTIMIZERS[name].default_lr * 0.5, **OPTIONS.get(name, {}))


def train(model, opt, steps: int, start: int = 0) -> list[float]:
    losses = []
    for t in range(start, start + steps):
        x, y = batch(t)
        loss = nn.functional.cross_entropy(model(x).float().reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def state_dtypes(opt) -> list[dict]:
    children = opt.optimizers if hasattr(opt, "optimizers") else [opt]
    return [{k: v.dtype for k, v in s.items() if isinstance(v, torch.Tensor)} for o in children for s in o.state.values()]


@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_resume_is_exact(name, dtype):
    if dtype == torch.float16 and name in ("adamw", "torch-muon"):
        pytest.skip("fused AdamW and torch.optim.Muon are checked in bf16; float16 adds nothing of ours")
    model, opt = build(name, dtype)
    straight = train(model, opt, 5)
    params_straight = [p.detach().clone() for p in model.parameters()]

    model, opt = build(name, dtype)
    first = train(model, opt, 3)
    dtypes_before = state_dtypes(opt)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    del model, opt
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model, opt = build(name, dtype)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    assert state_dtypes(opt) == dtypes_before, "load_state_dict changed a state tensor's dtype"
    second = train(model, opt, 2, start=3)
    assert first + second == straight
    for p, q in zip(model.parameters(), params_straight):
        assert torch.equal(p, q)

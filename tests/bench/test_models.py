"""The benchmark models: shapes, causality, whitening, parameter split."""

from __future__ import annotations

import pytest
import torch

from steepest.bench.models import GPT, MLP, AirbenchResNet, DigitsResNet, GPTConfig, count_parameters
from steepest.optim.build import split_parameters


def test_mlp_and_digits_resnet_shapes():
    x = torch.randn(5, 1, 8, 8)
    assert MLP(64, 10, width=16).forward(x).shape == (5, 10)
    net = DigitsResNet(10, width=4)
    assert net(x).shape == (5, 10)
    matrix, other = split_parameters(net, head=["head.weight"])
    assert any(p.ndim == 4 for _, p in matrix)  # conv weights go to the matrix optimizer
    assert "head.weight" in dict(other)


def test_airbench_whitening_is_frozen_and_whitens():
    torch.manual_seed(0)
    images = torch.randn(64, 3, 12, 12).cumsum(-1)  # correlated neighbouring pixels
    net = AirbenchResNet(10, widths=(8, 16, 16))
    net.init_whitening(images)
    assert not net.whiten.weight.requires_grad
    out = torch.nn.functional.conv2d(images.double(), net.whiten.weight[:12].double())
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    cov = torch.cov(flat)
    assert torch.allclose(cov, torch.eye(12, dtype=cov.dtype), atol=0.05)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert "whiten.weight" not in dict(split_parameters(net)[0])


@pytest.mark.parametrize("norm, pos", [("rms", "rope"), ("layer", "learned")])
def test_gpt_is_causal_and_shaped(norm, pos):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, norm=norm, pos=pos)
    model = GPT(cfg).eval()
    idx = torch.randint(0, 11, (2, 16))
    logits = model(idx)
    assert logits.shape == (2, 16, 11)
    idx2 = idx.clone()
    idx2[:, 10:] = (idx2[:, 10:] + 1) % 11
    assert torch.allclose(model(idx2)[:, :10], logits[:, :10], atol=1e-6)
    assert not torch.allclose(model(idx2)[:, 10:], logits[:, 10:])
    matrix, other = split_parameters(model, head=["lm_head.weight"])
    names = dict(matrix)
    assert "blocks.0.attn.qkv.weight" in names and "lm_head.weight" not in names and "wte.weight" not in names
    assert count_parameters(model) > 0
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_gpt_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="norm"):
        GPTConfig(norm="batch")

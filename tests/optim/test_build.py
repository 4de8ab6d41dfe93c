import pytest
import torch
from torch import nn

import steepest
from steepest import CombinedOptimizer, Muon, NewtonMuon, split_parameters

from .conftest import TinyConvNet


def names(pairs):
    return [n for n, _ in pairs]


def test_split_language_model(lm_model):
    matrix, other = split_parameters(lm_model)
    assert names(matrix) == ["a.weight", "b.weight"]
    assert set(names(other)) == {"embed.weight", "a.bias", "b.bias", "norm.weight", "norm.bias", "lm_head.weight"}


def test_split_classifier_head_is_last_linear(conv_model):
    matrix, other = split_parameters(conv_model)
    assert names(matrix) == ["conv1.weight", "conv2.weight", "hidden.weight"]
    assert "head.weight" in names(other)


def test_split_user_head_and_tied_weights(lm_model):
    matrix, other = split_parameters(lm_model, head=["b.weight"])
    assert names(matrix) == ["a.weight", "lm_head.weight"]
    lm_model.lm_head.weight = lm_model.embed.weight
    matrix, other = split_parameters(lm_model)
    assert names(other).count("embed.weight") == 1 and "lm_head.weight" not in names(other) + names(matrix)
    with pytest.raises(ValueError, match="head: no trainable parameter named 'nope'"):
        split_parameters(lm_model, head=["nope"])


def test_build_returns_one_combined_optimizer(lm_model):
    opt = steepest.build_optimizer(lm_model, "muon", lr=0.03, adamw_lr=1e-3)
    assert isinstance(opt, CombinedOptimizer)
    muon, adamw = opt.optimizers
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    assert [g["lr"] for g in opt.param_groups] == [0.03, 1e-3]
    sd = opt.state_dict()
    assert len(sd["optimizers"]) == 2


def test_build_newton_muon_installs_hooks(lm_model):
    opt = steepest.build_optimizer(lm_model, "newton-muon")
    nm = opt.optimizers[0]
    assert isinstance(nm, NewtonMuon) and len(nm._hooks) == 2
    x = torch.randint(0, 17, (2, 5))
    nn.functional.cross_entropy(lm_model(x).reshape(-1, 17), x.reshape(-1)).backward()
    opt.step()
    assert all("input_moment" in nm.state[p] for p in (lm_model.a.weight, lm_model.b.weight))
    assert not nm._collecting  # collects again on the next refresh step only


def test_newton_muon_from_model(conv_model):
    nm = NewtonMuon.from_model(conv_model, lr=0.01)
    assert len(nm._hooks) == 1  # the hidden Linear; the conv weights are updated as by Muon


def test_every_name_builds_and_steps(conv_model):
    """Ours and the installed peers (heavyball compiles its steps: slow on first use)."""
    for name in steepest.optimizer_names():
        if name == "torch-muon":
            continue
        torch.manual_seed(0)
        model = TinyConvNet()
        opt = steepest.build_optimizer(model, name)
        x = torch.randn(4, 1, 8, 8)
        model(x).square().mean().backward()
        opt.step()

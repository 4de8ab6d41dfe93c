import pytest
import torch
from torch import nn

import steepest
from steepest import Muon, Neon, NewtonMuon, Shampoo, SignDescent


def w(*shape):
    return nn.Parameter(torch.randn(*shape))


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown optimizer name 'adam'; valid names: muon, .*neon-nuclear, .*dion, .*adamw"):
        steepest.build_optimizer(nn.Linear(3, 3), "adam")


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: Muon([w(3, 4)], lr=-1.0), r"lr must be in \[0.0, inf\)|lr must be in"),
        (lambda: Muon([w(3, 4)], lr=torch.tensor([0.1, 0.2])), "lr must be a number or a 1-element tensor"),
        (lambda: Muon([w(3, 4)], momentum=1.0), r"momentum must be in \[0.0, 1.0\)"),
        (lambda: Muon([w(3, 4)], momentum=-0.1), "momentum must be in"),
        (lambda: Muon([w(3, 4)], weight_decay=-1), "weight_decay must be in"),
        (lambda: Muon([w(3, 4)], msgn_method="qr"), "unknown msgn_method 'qr'; accepted values"),
        (lambda: Muon([w(3, 4)], scale="rms"), "unknown scale 'rms'"),
        (lambda: Muon([w(3, 4)], ns_steps=0), "ns_steps must be an integer >= 1"),
        (lambda: Muon([w(3, 4)], nonfinite="warn"), "unknown nonfinite 'warn'"),
        (lambda: Neon([w(3, 4)], mode="spectral"), "unknown mode 'spectral'; accepted values: 'nuclear', 'fstar'"),
        (lambda: Neon([w(3, 4)], sigma="half"), "unknown sigma 'half'"),
        (lambda: Neon([w(3, 4)], iters=-1), "iters must be an integer >= 0"),
        (lambda: Shampoo([w(3, 4)], eps=-1e-3), "eps must be in"),
        (lambda: Shampoo([w(3, 4)], update_every=0), "update_every must be an integer >= 1"),
        (lambda: Shampoo([w(3, 4)], grafting="sgd"), "unknown grafting 'sgd'"),
        (lambda: NewtonMuon([w(3, 4)], damping=-0.1), "damping must be in"),
        (lambda: NewtonMuon([w(3, 4)], refresh_every=0), "refresh_every must be an integer >= 1"),
        (lambda: SignDescent([w(3, 4)], lr=float("nan")), "lr must be a number"),
    ],
)
def test_invalid_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("cls", [Muon, Neon, NewtonMuon, Shampoo])
def test_vector_parameter_is_refused_with_the_fix(cls):
    with pytest.raises(ValueError, match=r"parameter 'bias' has shape \(4,\); give 1-D parameters .* to AdamW"):
        cls([("weight", w(4, 3)), ("bias", w(4))])


def test_sign_descent_accepts_vectors():
    SignDescent([w(4)])


def test_sparse_and_complex_gradients():
    p = w(4, 3)
    opt = Muon([p])
    p.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(ValueError, match="does not support sparse gradients"):
        opt.step()
    with pytest.raises(ValueError, match="does not support complex parameters"):
        Muon([nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))])


def test_torch_muon_refuses_conv_with_the_fix():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="torch.optim.Muon only supports 2-D parameters.*use 'muon'"):
        steepest.build_optimizer(model, "torch-muon")


def test_combined_rejects_shared_parameters_and_bad_state():
    p = w(3, 3)
    with pytest.raises(ValueError, match="appears in two"):
        steepest.CombinedOptimizer([Muon([p]), torch.optim.AdamW([p])])
    opt = steepest.CombinedOptimizer([Muon([w(3, 3)])])
    with pytest.raises(ValueError, match="does not match this CombinedOptimizer"):
        opt.load_state_dict({"state": {}, "param_groups": []})

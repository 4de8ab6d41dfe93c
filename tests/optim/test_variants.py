"""Optimizer variants, ``"NAME(KEY=VALUE,...)"``: a registered name with constructor options,
built by ``build_optimizer`` and run by the harness like any name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from steepest.optim.build import build_optimizer, parse_routes
from steepest.optim.registry import OPTIMIZERS, register_variant, registration, split_names


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 50))


def test_split_names_keeps_commas_inside_parentheses():
    assert split_names("muon,muon(weight_decay=0.1,cautious_weight_decay=True),adamw") == [
        "muon", "muon(weight_decay=0.1,cautious_weight_decay=True)", "adamw"]


def test_variant_keeps_the_base_rate_and_family_and_overrides_its_options():
    name = register_variant("neon-nuclear(momentum=0.8)")
    r, base = OPTIMIZERS[name], OPTIMIZERS["neon-nuclear"]
    assert (r.default_lr, r.family, r.variant_of, r.color) == (base.default_lr, base.family, "neon-nuclear", None)
    assert dict(r.options) == {**base.options, "momentum": 0.8}
    assert registration("neon-nuclear(momentum=0.8)") is r


def test_variant_options_reach_the_matrix_optimizer_and_the_adamw_part():
    opt = build_optimizer(_model(), "muon(weight_decay=0.1,cautious_weight_decay=true)", adamw_weight_decay=0.01)
    muon, adamw = opt.optimizers
    assert muon.param_groups[0]["weight_decay"] == 0.1 and muon.param_groups[0]["cautious_weight_decay"] is True
    assert type(adamw).__name__ == "CautiousAdamW"


def test_variant_steps_as_the_base_with_those_options():
    a, b = _model(), _model()
    oa = build_optimizer(a, "muon", weight_decay=0.1, cautious_weight_decay=True)
    ob = build_optimizer(b, "muon(weight_decay=0.1,cautious_weight_decay=True)")
    x = torch.randint(0, 50, (8,))
    for model, opt in ((a, oa), (b, ob)):
        for _ in range(3):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_variant_in_routes():
    routes = parse_routes("1.*=muon(weight_decay=0.1)+adamw")
    assert routes == {"1.*": "muon(weight_decay=0.1)", "*": "adamw"}
    opt = build_optimizer(_model(), routes)
    assert opt.optimizers[0].param_groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("muon(wd=0.1)", "muon has no option 'wd'; its options: momentum"),
        ("nosuch(weight_decay=0.1)", "unknown optimizer 'nosuch'"),
        ("muon()", "name at least one option"),
        ("muon(0.1)", "write KEY=VALUE"),
        ("muon(weight_decay=[)", "bad option value"),
    ],
)
def test_bad_variants_are_one_line_errors(text, fragment):
    with pytest.raises(ValueError, match=None) as e:
        register_variant(text)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert text not in OPTIMIZERS


def test_bad_variant_option_value_is_reported_by_the_optimizer():
    with pytest.raises(ValueError, match="cautious_weight_decay"):
        build_optimizer(_model(), "muon(cautious_weight_decay=3)")

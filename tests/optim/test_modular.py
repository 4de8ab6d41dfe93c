"""``Modular`` (registered ``modular`` and ``scion``): every parameter in one optimizer with the norm
of its role, the update rules in float64 against formulas written out here, Frank–Wolfe's ball,
the seed's dual step, routes, ``modular_init``, and bad input.

Float64 with ``msgn_method="svd"``: the compared computations are the same arithmetic up to
reordering, so 1e-12 relative bounds them (a few dozen float64 roundings)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import steepest
from steepest import Modular, modular_init
from steepest.directions.modular import l1_to_rms, rms_to_rms, sign_head
from steepest.optim.modular import EMBED_RADIUS, HEAD_RADIUS, RADIUS

F64 = torch.float64


class TiedLM(nn.Module):
    """An embedding tied to the head, a position table (embedding-like), two hidden Linears with biases, a norm gain."""

    def __init__(self, vocab=19, width=8, context=6):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(1, context, width) * 0.1)
        self.mlp = nn.ModuleDict({"fc": nn.Linear(width, 16), "proj": nn.Linear(16, width)})
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, idx):
        x = self.wte(idx) + self.pos[:, : idx.shape[1]]
        x = x + self.mlp["proj"](torch.relu(self.mlp["fc"](x)))
        return self.lm_head(self.norm(x))


def lm_loss(model, step):
    gen = torch.Generator().manual_seed(step)
    idx = torch.randint(0, 19, (3, 6), generator=gen)
    out = model(idx)
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]).float(), idx.reshape(-1))


def tied(dtype=F64, seed=0):
    torch.manual_seed(seed)
    return TiedLM().to(dtype)


def roles(opt) -> dict[str, str]:
    return {n: g["role"] for g in opt.param_groups for n in g["param_names"]}


@pytest.mark.parametrize("name", ["modular", "scion"])
def test_build_holds_every_parameter_once_with_its_role(name):
    model = tied()
    opt = steepest.build_optimizer(model, name)
    assert [type(o) for o in opt.optimizers] == [Modular]  # no AdamW anywhere
    held = [p for g in opt.param_groups for p in g["params"]]
    assert len(held) == len({id(p) for p in held}) == len(list(model.parameters()))
    assert roles(opt) == {
        "wte.weight": "head",  # tied embedding/head: updated once, as the head
        "pos": "embedding-like",
        "mlp.fc.weight": "hidden", "mlp.proj.weight": "hidden",
        "mlp.fc.bias": "vector", "mlp.proj.bias": "vector", "norm.weight": "vector", "norm.bias": "vector",
    }  # fmt: skip
    assert opt.param_groups[-1]["role"] == "hidden"
    assert opt.optimizers[0].param_groups[0]["weight_decay"] == (1.0 if name == "scion" else 0.0)


def reference_directions(model, grads, radius=RADIUS, embed_radius=EMBED_RADIUS, head_radius=HEAD_RADIUS):
    """Each parameter's ρ·D from the atoms, by name (the roles written out by hand)."""
    out = {}
    for n, g in grads.items():
        if n == "wte.weight":
            out[n] = head_radius * sign_head(g)
        elif n == "pos":
            out[n] = embed_radius * l1_to_rms(g.reshape(-1, g.shape[-1])).reshape(g.shape)
        elif g.ndim == 2:
            out[n] = radius * rms_to_rms(g, method="svd")
        else:
            out[n] = g * math.sqrt(g.numel()) / g.norm()
    return out


@pytest.mark.parametrize("name,decay", [("modular", 0.0), ("scion", 1.0)])
def test_one_step_is_the_formula(name, decay):
    """``W ← (1 − lr·λ)·W − lr·ρ·D(G)`` with momentum off, for every role."""
    model = tied()
    opt = steepest.build_optimizer(model, name, lr=0.01, momentum=0.0, msgn_method="svd", radius=2.0, embed_radius=3.0, head_radius=5.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lm_loss(model, 0).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    D = reference_directions(model, grads, radius=2.0, embed_radius=3.0, head_radius=5.0)
    for n, p in model.named_parameters():
        expected = (1 - 0.01 * decay) * before[n] - 0.01 * D[n]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14, msg=n)


def test_momentum_is_scions_ema():
    """``M ← βM + (1−β)G`` (Scion's ``momentum=α`` is ``1 − β``), no Nesterov by default."""
    p = nn.Parameter(torch.randn(6, 4, dtype=F64))
    opt = Modular([p], lr=0.1, momentum=0.9, msgn_method="svd")
    M = torch.zeros_like(p)
    for step in range(3):
        g = torch.randn(6, 4, generator=torch.Generator().manual_seed(step), dtype=F64)
        before = p.detach().clone()
        p.grad = g
        opt.step()
        M = 0.9 * M + 0.1 * g
        torch.testing.assert_close(p.detach(), before - 0.1 * RADIUS * rms_to_rms(M, method="svd"), rtol=1e-12, atol=1e-14)


def test_scion_keeps_every_weight_in_its_ball():
    """From modular_init (every weight on its sphere), Frank–Wolfe steps stay in each ball:
    RMS→RMS ≤ ρ for hidden, row RMS ≤ ρ for the position table, d_in·max|W| ≤ ρ for the head,
    RMS ≤ ρ for 1-D (a convex combination of points in the ball; bound with float64 rounding)."""
    model = modular_init(tied(), radius=2.0, embed_radius=3.0, head_radius=5.0)
    opt = steepest.build_optimizer(model, "scion", lr=0.2, msgn_method="svd", radius=2.0, embed_radius=3.0, head_radius=5.0)
    for step in range(12):
        opt.zero_grad()
        lm_loss(model, step).backward()
        opt.step()
    tol = 1 + 1e-12
    for n in ("mlp.fc.weight", "mlp.proj.weight"):
        W = model.get_parameter(n).detach()
        assert math.sqrt(W.shape[1] / W.shape[0]) * torch.linalg.svdvals(W)[0] <= 2.0 * tol
    assert model.pos.detach().reshape(-1, 8).norm(dim=-1).max() / math.sqrt(8) <= 3.0 * tol
    assert 8 * model.wte.weight.detach().abs().max() <= 5.0 * tol
    for n in ("mlp.fc.bias", "mlp.proj.bias", "norm.weight", "norm.bias"):  # biases start at 0, the gains at RMS 1
        b = model.get_parameter(n).detach()
        assert b.norm() / math.sqrt(b.numel()) <= 1.0 * tol


def test_dual_step_is_the_seeds_global_step():
    """``step="dual"``: ``t = Σ_l (μ_l/μ)·⟨M_l, ρ_l D_l⟩`` over every parameter, then
    ``ΔW_l = −lr·t·(μ_l/μ)·ρ_l·D_l`` (sensitivities ``s_l = μ/μ_l``), masses per param group."""
    model = tied()
    opt = steepest.build_optimizer(model, "modular", lr=1e-3, momentum=0.0, step="dual", msgn_method="svd")
    inner = opt.optimizers[0]
    inner.param_groups[0]["mass"] = 3.0  # the first role group weighs more
    masses = {n: g["mass"] for g in inner.param_groups for n in g["param_names"]}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lm_loss(model, 0).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    D = reference_directions(model, grads)
    total = sum(masses.values())
    t = sum(masses[n] / total * (grads[n] * D[n]).sum() for n in grads)
    assert t > 0
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] - 1e-3 * t * masses[n] / total * D[n], rtol=1e-12, atol=1e-15, msg=n)


def test_dual_step_trains():
    model = tied(torch.float32)
    opt = steepest.build_optimizer(model, "modular", lr=1e-5, step="dual")
    losses = []
    for step in range(30):
        opt.zero_grad()
        loss = lm_loss(model, step % 3)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_routes_give_the_non_matrices_to_the_role_optimizer():
    model = tied(torch.float32)
    opt = steepest.build_optimizer(model, {"mlp.*": "neon-fstar", "*": "modular"})
    kinds = [type(o).__name__ for o in opt.optimizers]
    assert sorted(kinds) == ["Modular", "Neon"]
    neon, modular = (opt.optimizers[kinds.index(k)] for k in ("Neon", "Modular"))
    assert {n for g in neon.param_groups for n in g["param_names"]} == {"mlp.fc.weight", "mlp.proj.weight"}
    assert set(roles(modular)) == {"wte.weight", "pos", "mlp.fc.bias", "mlp.proj.bias", "norm.weight", "norm.bias"}
    lm_loss(model, 0).backward()
    opt.step()
    # an explicit AdamW route before the role optimizer still wins for what it matches
    opt = steepest.build_optimizer(model, {"*.bias": "adamw", "*": "scion"})
    adamw = next(o for o in opt.optimizers if isinstance(o, torch.optim.AdamW))
    assert {n for g in adamw.param_groups for n in g["param_names"]} == {"mlp.fc.bias", "mlp.proj.bias", "norm.bias"}


def test_unfrozen_parameters_join_with_their_roles():
    model = tied(torch.float32)
    for p in (model.pos, model.norm.weight, model.mlp["fc"].weight):
        p.requires_grad_(False)
    opt = steepest.build_optimizer(model, "modular")
    for p in (model.pos, model.norm.weight, model.mlp["fc"].weight):
        p.requires_grad_(True)
    opt.add_param_group({"params": [model.pos, model.norm.weight, model.mlp["fc"].weight]})
    assert len(opt.optimizers) == 1
    assert {"pos": "embedding-like", "norm.weight": "vector", "mlp.fc.weight": "hidden"}.items() <= roles(opt.optimizers[0]).items()
    lm_loss(model, 0).backward()
    opt.step()


def test_modular_init_puts_every_weight_on_its_sphere():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.LayerNorm(32), nn.Linear(32, 5))
    gains = model[3].weight.detach().clone()
    modular_init(model, radius=2.0, head_radius=7.0)
    conv = model[0].weight.detach().reshape(8, -1).double()
    torch.testing.assert_close(torch.linalg.svdvals(conv) * math.sqrt(27 / 8), torch.full((8,), 2.0, dtype=F64), rtol=1e-6, atol=0)
    hidden = model[2].weight.detach().double()
    torch.testing.assert_close(torch.linalg.svdvals(hidden) * math.sqrt(128 / 32), torch.full((32,), 2.0, dtype=F64), rtol=1e-6, atol=0)
    assert torch.equal(model[4].weight.detach().abs(), torch.full((5, 32), 7.0 / 32))  # Sign: ±ρ/d_in
    assert not model[0].bias.any() and not model[2].bias.any() and torch.equal(model[3].weight.detach(), gains)
    lm = modular_init(tied(), embed_radius=3.0, head_radius=5.0)
    assert torch.equal(lm.wte.weight.detach().abs(), torch.full((19, 8), 5.0 / 8, dtype=F64))  # tied: the head's init
    torch.testing.assert_close(lm.pos.detach().reshape(-1, 8).norm(dim=-1) / math.sqrt(8), torch.full((6,), 3.0, dtype=F64))


def test_modular_init_head_atoms():
    for atom, norm in (("rownorm", lambda W: math.sqrt(W.shape[1]) * W.norm(dim=-1).max()), ("spectral", lambda W: math.sqrt(W.shape[1] / W.shape[0]) * torch.linalg.svdvals(W)[0])):
        model = modular_init(nn.Sequential(nn.Linear(6, 12), nn.Linear(12, 4)).double(), head_atom=atom, head_radius=3.0)
        assert abs(float(norm(model[1].weight.detach())) - 3.0) <= 1e-12


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(head_atom="colnorm"), "unknown head_atom 'colnorm'; accepted values: 'sign', 'rownorm', 'spectral'"),
        (dict(vector_atom="l2"), "unknown vector_atom 'l2'; accepted values: 'rms', 'sign'"),
        (dict(step="exact"), "unknown step 'exact'; accepted values: 'fixed', 'dual'"),
        (dict(head_radius=-1.0), "head_radius must be in"),
        (dict(momentum=1.0), "momentum must be in"),
    ],
)
def test_bad_options_are_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")) as info:
        Modular([nn.Parameter(torch.ones(3, 3))], **kwargs)
    assert "\n" not in str(info.value)


def test_bad_groups_are_one_line():
    w, b = nn.Parameter(torch.ones(3, 3)), nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="unknown role 'hiden'; accepted values: 'auto', 'hidden'"):
        Modular([{"params": [w], "role": "hiden"}])
    with pytest.raises(ValueError, match="parameter 'fc.bias' has shape \\(3,\\): role 'head' needs >= 2 dims"):
        Modular([{"params": [("fc.bias", b)], "role": "head"}])
    with pytest.raises(ValueError, match="mass must be a number > 0"):
        Modular([{"params": [w], "mass": 0.0}])
    opt = Modular([{"params": [w]}, {"params": [b], "step": "dual"}])
    w.grad, b.grad = torch.ones(3, 3), torch.ones(3)
    with pytest.raises(ValueError, match="step must be the same in every param group"):
        opt.step()
    with pytest.raises(ValueError, match="unknown head_atom"):
        steepest.build_optimizer(tied(), "modular", head_atom="max")
    with pytest.raises(ValueError, match="unknown head_atom"):
        modular_init(tied(), head_atom="max")


def test_auto_role_keeps_biases_and_column_weights_apart():
    """An ``(n, 1)`` weight (hidden: √n·msgn, a unit column) and an ``n``-vector bias in one group
    land in different batches, so ``vector_atom="sign"`` reaches the bias only."""
    w, b = nn.Parameter(torch.zeros(5, 1, dtype=F64)), nn.Parameter(torch.zeros(5, dtype=F64))
    opt = Modular([w, b], lr=1.0, momentum=0.0, vector_atom="sign", msgn_method="svd")
    g = torch.tensor([3.0, -1.0, 0.5, 2.0, -2.0], dtype=F64)
    w.grad, b.grad = g.view(5, 1).clone(), g.clone()
    opt.step()
    torch.testing.assert_close(w.detach().view(-1), -RADIUS * math.sqrt(5) * g / g.norm(), rtol=1e-12, atol=0)
    assert torch.equal(b.detach(), -torch.sign(g))

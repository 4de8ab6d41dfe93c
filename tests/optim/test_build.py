import math
import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import steepest
from steepest.directions.msgn import default_iteration_dtype
from steepest import CombinedOptimizer, Muon, NewtonMuon, split_parameters
from steepest.optim.build import parse_routes
from steepest.optim.newton_muon import conv_patches
from steepest.optim.split import classify_parameters, register_matrix_module

from ..registered import registered, registration
from .conftest import TinyConvNet


def names(pairs):
    return [n for n, _ in pairs]


class InOut(nn.Module):
    """A layer stored (in, out), applied as ``x @ W + b`` (like Hugging Face's Conv1D)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) / math.sqrt(n_in))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return x @ self.weight + self.bias


register_matrix_module(InOut, transposed=True)


class Encoder(nn.Module):
    """BERT-like: word/position/type embeddings, a hidden layer as wide as max positions, a pooler,
    and a classifier whose label count matches no embedding."""

    def __init__(self, vocab=50, positions=32, width=16, labels=3):
        super().__init__()
        self.word = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(positions, width)
        self.type = nn.Embedding(2, width)
        self.up = nn.Linear(width, positions)  # out_features == max positions: still hidden
        self.down = nn.Linear(positions, width)
        self.pooler = nn.Linear(width, width)
        self.classifier = nn.Linear(width, labels)

    def forward(self, ids):
        x = self.word(ids) + self.pos(torch.arange(ids.shape[1])) + self.type(torch.zeros_like(ids))
        x = x + self.down(torch.relu(self.up(x)))
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


class TinyViT(nn.Module):
    """Patch-embedding conv, CLS token (1,1,D), position embedding (1,N,D), a block, a head."""

    def __init__(self, d=16):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 5, d) * 0.02)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).mT
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1) + self.pos
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.head(self.norm(t[:, 0]))


def test_split_language_model(lm_model):
    matrix, other = split_parameters(lm_model)
    assert names(matrix) == ["a.weight", "b.weight"]
    assert set(names(other)) == {"embed.weight", "a.bias", "b.bias", "norm.weight", "norm.bias", "lm_head.weight"}


def test_split_classifier_head_is_last_linear(conv_model):
    matrix, other = split_parameters(conv_model)
    assert names(matrix) == ["conv1.weight", "conv2.weight", "hidden.weight"]
    assert "head.weight" in names(other)
    matrix, other = split_parameters(conv_model, inputs="adamw")  # the stem goes to AdamW on request
    assert names(matrix) == ["conv2.weight", "hidden.weight"]
    assert classify_parameters(conv_model, inputs="adamw").kinds()["conv1.weight"] == "input"


def test_split_head_is_not_a_size_coincidence():
    """The classifier (3 labels, no embedding of 3 rows... but a type embedding of 2) is the head;
    the layer as wide as the position table and the pooler stay hidden matrices."""
    model = Encoder()
    kinds = classify_parameters(model).kinds()
    assert kinds["classifier.weight"] == "head"
    assert [n for n, k in kinds.items() if k == "matrix"] == ["up.weight", "down.weight", "pooler.weight"]
    assert {n for n, k in kinds.items() if k == "embedding"} == {"word.weight", "pos.weight", "type.weight"}
    model2 = Encoder(labels=2)  # label count equal to the type embedding's size
    assert classify_parameters(model2).kinds()["classifier.weight"] == "head"


def test_split_tokens_and_position_embeddings_are_not_matrices():
    model = TinyViT()
    split = classify_parameters(model)
    kinds = split.kinds()
    assert kinds["cls"] == kinds["pos"] == "embedding-like"
    assert kinds["attn.in_proj_weight"] == kinds["attn.out_proj.weight"] == kinds["patch.weight"] == "matrix"
    assert kinds["head.weight"] == "head"
    assert {i.name: i.shape for i in split.matrix}["patch.weight"] == (16, 48)
    assert len(split.params) == len(list(model.parameters()))  # every parameter once


def test_head_override_is_additive_and_tie_aware(lm_model):
    matrix, other = split_parameters(lm_model, head=["b.weight"])
    assert names(matrix) == ["a.weight"]  # lm_head stays detected
    assert {"b.weight", "lm_head.weight"} <= set(names(other))
    lm_model.lm_head.weight = lm_model.embed.weight  # tied: counted once, under its first name
    matrix, other = split_parameters(lm_model, head=["lm_head.weight"])  # the second name works
    assert names(other).count("embed.weight") == 1 and "lm_head.weight" not in names(other) + names(matrix)
    assert names(matrix) == ["a.weight", "b.weight"]
    with pytest.raises(ValueError, match="head: no trainable parameter named 'nope'"):
        split_parameters(lm_model, head=["nope"])
    matrix, _ = split_parameters(lm_model, head=[lm_model.a])  # a module
    assert names(matrix) == ["b.weight"]


def test_bad_inputs_choice(lm_model):
    with pytest.raises(ValueError, match="inputs must be one of 'matrix', 'adamw'"):
        split_parameters(lm_model, inputs="sgd")


def test_build_returns_one_combined_optimizer(lm_model):
    opt = steepest.build_optimizer(lm_model, "muon", lr=0.03, adamw_lr=1e-3)
    assert isinstance(opt, CombinedOptimizer)
    muon, adamw = opt.optimizers
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    assert [g["lr"] for g in opt.param_groups] == [0.03, 1e-3]
    sd = opt.state_dict()
    assert len(sd["optimizers"]) == 2


class InOutNet(nn.Module):
    """Two (in, out) layers and their nn.Linear twins, for the transposed-view contract."""

    def __init__(self, d_in=128, d_hidden=256, linear=False):
        super().__init__()
        self.fc = nn.Linear(d_in, d_hidden) if linear else InOut(d_in, d_hidden)
        self.proj = nn.Linear(d_hidden, d_in) if linear else InOut(d_hidden, d_in)
        self.out = nn.Linear(d_in, 4)

    def forward(self, x):
        return self.out(self.proj(torch.relu(self.fc(x))))


# Element-wise optimizers (sign descent) ignore the transposed view: their update is the same either way.
@pytest.mark.parametrize("name", [n for n in registered(matrix=True, peer=False) if not registration(n).factory.elementwise])
def test_transposed_weights_step_as_their_transpose(name):
    """A model of (in, out) layers steps exactly as its nn.Linear twin (weights transposed): the
    optimizers see (out, in) (scale √(256/128) for fc, the right preconditioner on the input side)."""
    if name not in steepest.optimizer_names():
        pytest.skip(f"{name} not registered")
    torch.manual_seed(0)
    a = InOutNet().double()
    b = InOutNet(linear=True).double()
    with torch.no_grad():
        for la, lb in ((a.fc, b.fc), (a.proj, b.proj)):
            lb.weight.copy_(la.weight.T)
            lb.bias.copy_(la.bias)
        b.out.load_state_dict(a.out.state_dict())
    oa, ob = steepest.build_optimizer(a, name), steepest.build_optimizer(b, name)
    assert oa.optimizers[0].param_groups[-1].get("transposed") is True
    assert oa.optimizers[0].matrix_shape(a.fc.weight) == (256, 128)
    start = [lb.weight.detach().clone() for lb in (b.fc, b.proj)]
    for step in range(2):
        x = torch.randn(32, 128, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
        for model, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for la, lb, w0 in ((a.fc, b.fc, start[0]), (a.proj, b.proj, start[1])):
        step_a, step_b = la.weight.detach().T - w0, lb.weight.detach() - w0
        # relative to the step, from the precision the step is computed in (a wrong orientation or
        # scale is off by O(1)): the Muon family iterates in default_iteration_dtype (bf16 on CPUs
        # with native bf16, float32 on AVX2 CPUs, where BLAS rounds a transposed layout differently:
        # 1e-5 measured on an AVX2 EPYC) even for float64 weights; the others compute in float64,
        # except Shampoo, whose roots amplify rounding on rank-deficient statistics (5e-6 measured).
        # (Dion: the momentum has rank 4 < r = 32 here; its noise columns must not enter the update)
        # Newton-Muon applies K⁻¹ in float32: κ(K + δI) ≤ 5d with its ridge δ = 0.2·tr K/d, so G·K⁻¹
        # carries 5d·2^-24 ≈ 4e-5 relative (d = 128), which msgn and two steps amplify: 1e-3 there.
        factory = registration(name).factory
        iterates = issubclass(factory, steepest.Muon) or "msgn_dtype" in inspect.signature(factory).parameters  # msgn iterators
        iteration = default_iteration_dtype("cpu") if iterates else torch.float64
        tol = 1e-4 if name == "shampoo" else {torch.bfloat16: 1e-2, torch.float32: 1e-4, torch.float64: 1e-8}[iteration]
        if name == "newton-muon" and iteration == torch.float32:
            tol = 1e-3
        assert torch.linalg.norm(step_a - step_b) <= tol * torch.linalg.norm(step_b)


def test_transposed_scale_is_on_out_in():
    """Muon's step of an (in, out) weight of 128x512 has spectral norm lr·√(512/128) = 2·lr."""
    torch.manual_seed(0)
    layer = InOut(128, 512).double()
    opt = steepest.build_optimizer(nn.Sequential(layer, nn.Linear(512, 3).double()), "muon", lr=0.01, momentum=0.0, msgn_method="svd")
    before = layer.weight.detach().clone()
    layer(torch.randn(64, 128, dtype=torch.float64)).square().mean().backward()
    opt.step()
    step = torch.linalg.matrix_norm(layer.weight.detach() - before, ord=2)
    assert abs(step.item() - 0.02) < 1e-9


def test_build_newton_muon_installs_hooks(lm_model):
    opt = steepest.build_optimizer(lm_model, "newton-muon")
    nm = opt.optimizers[0]
    assert isinstance(nm, NewtonMuon) and len(nm._hooks) == 2
    x = torch.randint(0, 17, (2, 5))
    nn.functional.cross_entropy(lm_model(x).reshape(-1, 17), x.reshape(-1)).backward()
    opt.step()
    assert all("input_moment" in nm.state[p] for p in (lm_model.a.weight, lm_model.b.weight))
    assert not nm._collecting  # collects again on the next refresh step only


@pytest.mark.parametrize(
    "conv, shape",
    [
        (nn.Conv2d(3, 8, 3, padding=1), (2, 3, 9, 7)),
        (nn.Conv2d(4, 8, (3, 2), stride=2, dilation=(1, 2), padding=(2, 1), padding_mode="reflect"), (2, 4, 10, 9)),
        (nn.Conv2d(3, 5, 3, padding="same", padding_mode="circular"), (1, 3, 6, 6)),
        (nn.Conv1d(4, 6, 5, stride=2, padding=2), (3, 4, 11)),
        (nn.Conv3d(2, 4, (2, 3, 3), padding=(0, 1, 1)), (1, 2, 4, 5, 5)),
    ],
)
def test_conv_patches_are_what_the_conv_multiplies(conv, shape):
    """conv(x) = Z·W_viewᵀ (no bias), with Z = conv_patches(x): the inputs of the (out, in·k…) view."""
    conv = conv.double()
    x = torch.randn(shape, dtype=torch.float64)
    Z = conv_patches(x, conv)
    y = conv(x) - conv.bias.view(1, -1, *[1] * (x.ndim - 2))
    ref = y.movedim(1, -1).reshape(-1, conv.out_channels)
    torch.testing.assert_close(Z @ conv.weight.reshape(conv.out_channels, -1).T, ref, rtol=1e-10, atol=1e-10)


def test_newton_muon_conv_moment_is_the_unfolded_patches():
    """A 256x(64·3·3) conv's K after the first refresh: ema·ZᵀZ/N of F.unfold's patches (float64)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 256, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(256 * 16, 3))
    nm = NewtonMuon.from_model(model, lr=0.01)
    assert len(nm._hooks) == 1  # the conv (the Linear is the head)
    x = torch.randn(2, 64, 4, 4)
    model(x).square().mean().backward()
    nm.step()
    Z = F.unfold(x.double(), 3, padding=1).mT.reshape(-1, 64 * 9)
    K = (1 - nm.ema) * nm.init_diag * torch.eye(64 * 9, dtype=torch.float64) + nm.ema * Z.T @ Z / Z.shape[0]
    torch.testing.assert_close(nm.state[model[0].weight]["input_moment"].double(), K, rtol=1e-5, atol=1e-6)


class QKV(nn.Module):
    def __init__(self, d=128):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        a = F.scaled_dot_product_attention(self.q(x)[:, None], self.k(x)[:, None], self.v(x)[:, None])[:, 0]
        return self.head(self.o(a))


def test_newton_muon_shared_input_moment_computed_once():
    """q, k and v read one tensor: its ZᵀZ is computed once and added to each (float64 reference)."""
    torch.manual_seed(0)
    model = QKV()
    nm = NewtonMuon.from_model(model)
    x = torch.randn(2, 8, 128)
    model(x).sum().backward()
    sums = nm._sums
    assert sums[model.q.weight][0] is sums[model.k.weight][0] is sums[model.v.weight][0]  # one ZᵀZ
    assert sums[model.o.weight][0] is not sums[model.q.weight][0]
    Zx = x.double().reshape(-1, 128)
    torch.testing.assert_close(sums[model.q.weight][0].double(), Zx.T @ Zx, rtol=1e-5, atol=1e-3)
    assert sums[model.q.weight][1] == 16
    nm.step()


def test_newton_muon_hooks_mha_and_warns_by_name():
    """Self-attention's fused in_proj is hooked; out_proj (applied by F.linear) is named in a warning."""
    torch.manual_seed(0)
    model = TinyViT()
    opt = steepest.build_optimizer(model, "newton-muon")
    nm = opt.optimizers[0]
    assert model.attn.in_proj_weight in nm._sums and model.patch.weight in nm._sums
    assert model.attn.out_proj.weight not in nm._sums
    with pytest.warns(UserWarning, match=r"no input statistics for 'attn\.out_proj\.weight'"):
        model(torch.randn(2, 3, 8, 8)).square().mean().backward()
        opt.step()
    assert nm.state[model.attn.in_proj_weight]["input_moment"].shape == (16, 16)
    assert nm.state[model.patch.weight]["input_moment"].shape == (48, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        opt.step()


def test_newton_muon_without_statistics_warns():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = steepest.build_optimizer(model, "newton-muon")
    with torch.no_grad():
        model(torch.randn(3, 8))
    model[0].weight.grad = torch.randn(16, 8)
    with pytest.warns(UserWarning, match=r"no input statistics for '0\.weight'.*torch\.no_grad"):
        opt.step()


def test_newton_muon_from_model(conv_model):
    nm = NewtonMuon.from_model(conv_model, lr=0.01)
    assert len(nm._hooks) == 3  # both convs (unfolded patches) and the hidden Linear


def test_routes_one_state_dict_one_scheduler(lm_model):
    opt = steepest.build_optimizer(lm_model, {"a.*": "neon-fstar", "*": "muon"}, adamw_lr=1e-3)
    neon, muon, adamw = opt.optimizers
    assert type(neon).__name__ == "Neon" and isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    assert [p is lm_model.a.weight for p in neon.param_groups[0]["params"]] == [True]
    assert [p is lm_model.b.weight for p in muon.param_groups[0]["params"]] == [True]
    assert [g["lr"] for g in opt.param_groups] == [1.0, 0.02, 1e-3]  # each route's default lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.01, 5e-4]
    x = torch.randint(0, 17, (2, 5))
    lm_model(x).square().mean().backward()
    opt.step()
    sched.step()
    sd = opt.state_dict()
    assert len(sd["optimizers"]) == 3 and "basis" in sd["optimizers"][0]["state"][0]
    again = steepest.build_optimizer(lm_model, "a.*=neon-fstar+muon", lr=2.0)  # the string form; lr multiplies
    assert [g["lr"] for g in again.param_groups] == [2.0, 0.04, 3e-4]
    again.load_state_dict(sd)


def test_routes_bad_input(lm_model):
    with pytest.raises(ValueError, match="no route matches matrix parameter 'b.weight'"):
        steepest.build_optimizer(lm_model, {"a.*": "muon"})
    with pytest.raises(ValueError, match="unknown optimizer name in route 'a.\\*': 'moun'"):
        steepest.build_optimizer(lm_model, {"a.*": "moun", "*": "muon"})
    with pytest.raises(ValueError, match="lr names \\['shampoo'\\]"):
        steepest.build_optimizer(lm_model, {"*": "muon"}, lr={"shampoo": 1e-3})
    with pytest.raises(ValueError, match="bad route"):
        parse_routes("a.*=+muon")


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


def test_weights_of_unknown_layers_going_to_adamw_are_named_in_a_warning():
    """Never a silent route (issue 24): a 3-D weight of a module the split does not know goes to
    AdamW with a warning that names it, and a model whose matrix optimizer ends up empty says so.
    ConvTranspose kernels, expert banks (a module with ``num_experts``) and parametrized weights
    are matrices (tests/optim/test_layouts.py), without a warning."""
    from torch.nn.utils.parametrizations import weight_norm

    class Bank(nn.Module):  # a stack of maps the split cannot know the layout of (no num_experts)
        def __init__(self):
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.randn(4, 256, 128))

        def forward(self, x):
            return torch.einsum("bh,eih->bi", x, self.gate_up_proj)

    model = nn.Sequential(nn.Linear(128, 128), Bank(), nn.Linear(256, 10))
    with pytest.warns(UserWarning, match=r"1 weight\(s\) of no layer type the split knows go to AdamW: 1\.gate_up_proj"):
        steepest.build_optimizer(model, "muon")
    with pytest.warns(UserWarning) as record:
        steepest.build_optimizer(nn.Sequential(Bank()), "muon")
    messages = [str(w.message) for w in record]
    assert any("go to AdamW: 0.gate_up_proj" in m for m in messages)
    assert any("no parameter is a matrix for muon" in m for m in messages)
    known = nn.Sequential(nn.ConvTranspose2d(512, 256, 3), weight_norm(nn.Conv2d(256, 256, 3)), nn.Flatten(), nn.Linear(256 * 9, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = steepest.build_optimizer(known, "muon")
    assert {n for g in opt.optimizers[0].param_groups for n in g["param_names"]} == {"0.weight", "1.parametrizations.weight.original1"}


@pytest.mark.parametrize("scheduler", ["onecycle", "cyclic"])
def test_combined_optimizer_has_the_defaults_schedulers_read(scheduler):
    """OneCycleLR and CyclicLR with their default cycle_momentum=True cycle the matrix optimizer's
    momentum (AdamW keeps its betas), and defaults["lr"] exists (issue 24)."""
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = steepest.build_optimizer(model, "muon", lr=0.02)
    if scheduler == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=10)
    else:
        sched = torch.optim.lr_scheduler.CyclicLR(opt, 1e-3, 1e-2, step_size_up=2)
    assert opt.defaults["lr"] == 0.02 and "betas" not in opt.defaults
    momenta = []
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 64)).square().mean().backward()
        opt.step()
        sched.step()
        momenta.append(opt.optimizers[0].param_groups[0]["momentum"])
    assert len(set(momenta)) > 1  # cycled
    assert opt.optimizers[-1].param_groups[0]["betas"] == (0.9, 0.95)


def test_unfrozen_layers_are_routed_by_the_split_and_visible_to_schedulers():
    """Progressive unfreezing (issue 24): add_param_group on build_optimizer's optimizer sends the
    new weight to the matrix optimizer and the bias to AdamW, and both groups are in param_groups
    (a scheduler and clipping reach them); a part that did not exist yet is built."""
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    for p in model.parameters():
        p.requires_grad_(False)
    model[6].weight.requires_grad_(True)  # only the head trains at first: no Muon part yet
    opt = steepest.build_optimizer(model, "muon")
    assert len(opt.optimizers) == 1
    for layer in (model[2], model[4]):
        for p in layer.parameters():
            p.requires_grad_(True)
        opt.add_param_group({"params": list(layer.parameters()), "lr": 0.01})
    muon = next(o for o in opt.optimizers if isinstance(o, steepest.Muon))
    assert {id(p) for g in muon.param_groups for p in g["params"]} == {id(model[2].weight), id(model[4].weight)}
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in groups for p in (model[2].weight, model[2].bias, model[4].weight, model[4].bias))
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    model(torch.randn(4, 64)).sum().backward()
    before = model[4].weight.detach().clone()
    opt.step()
    sched.step()
    assert not torch.equal(model[4].weight, before)
    assert groups[id(model[4].bias)]["lr"] == pytest.approx(0.005)
    with pytest.raises(ValueError, match="not a trainable parameter of the model"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(3, 3))]})


def test_step_warns_once_about_a_gradient_no_optimizer_holds():
    """A layer made trainable after build_optimizer, without add_param_group, would never train:
    step() names it, once."""
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    model[0].requires_grad_(False)
    opt = steepest.build_optimizer(model, "muon")
    model[0].requires_grad_(True)
    model(torch.randn(4, 128)).sum().backward()
    with pytest.warns(UserWarning, match=r"2 parameter\(s\) have a gradient but no optimizer and are not updated: 0\.weight, 0\.bias; add them with opt\.add_param_group"):
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # once
        opt.add_param_group({"params": list(model[0].parameters())})
        opt.step()

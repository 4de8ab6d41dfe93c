"""Weights that stack several matrices or store their map transposed: mixture-of-experts banks
``(E, out, in)``, grouped and depthwise convolutions, ``ConvTranspose`` kernels ``(in, out, k, k)``
and parametrized weights (``weight_norm``, ``spectral_norm``), for every registered matrix
optimizer (the list comes from the registry).

Each block of a stacked weight is its own matrix: the optimizer on the stack equals the same
optimizer on the blocks as separate parameters. The compared runs are in float64 (the Muon
family's iteration too) and differ only in how the same matrices are batched and laid out, so
their steps agree to float64 rounding amplified by the iterations: 1e-8 relative to the step
(a wrong block, orientation or scale is off by O(1)); Shampoo's inverse roots amplify rounding on
rank-deficient statistics, 1e-4.
"""

from __future__ import annotations

import copy
import inspect
import warnings

import pytest
import torch
from torch import nn

from steepest import build_optimizer
from steepest.optim.split import classify_parameters

from ..registered import registered, registration

NAMES = registered(matrix=True, peer=False, needs_model=False)


def float64(name: str) -> dict:
    """The iteration in float64 for the classes that iterate in a lower precision by default."""
    factory = registration(name).factory
    return {"msgn_dtype": torch.float64} if "msgn_dtype" in inspect.signature(factory).parameters else {}


def assert_same_step(name: str, after: torch.Tensor, reference: torch.Tensor, start: torch.Tensor) -> None:
    tol = 1e-4 if name == "shampoo" else 1e-8
    step = reference - start
    assert torch.linalg.norm(after - reference) <= tol * torch.linalg.norm(step)


def _steps(opt, params, grads_per_step) -> None:
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_expert_bank_steps_each_expert_as_its_own_matrix(name):
    torch.manual_seed(0)
    bank = nn.Parameter(torch.randn(4, 256, 128, dtype=torch.float64) * 0.02)
    start = bank.detach().clone()
    experts = [nn.Parameter(bank.detach()[e].clone()) for e in range(4)]
    grads = [torch.randn(4, 256, 128, dtype=torch.float64) for _ in range(3)]
    kw = float64(name)
    stacked = registration(name).build([{"params": [bank], "matrix_blocks": 4}], **kw)
    separate = registration(name).build(experts, **kw)
    _steps(stacked, [bank], [[g] for g in grads])
    _steps(separate, experts, [list(g.unbind(0)) for g in grads])
    assert_same_step(name, bank.detach(), torch.stack([e.detach() for e in experts]), start)
    # one state entry per key for the whole bank, and an exact resume
    again = registration(name).build([{"params": [nn.Parameter(bank.detach().clone())], "matrix_blocks": 4}], **kw)
    again.load_state_dict(copy.deepcopy(stacked.state_dict()))
    for key, value in stacked.state[bank].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(again.state[again.param_groups[0]["params"][0]][key], value), key


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("groups, channels_last", [(4, False), (4, True), (512, False)])
def test_grouped_and_depthwise_convs_step_per_group(name, groups, channels_last):
    """A 512-channel conv of ``groups`` groups: group ``g``'s kernel ``(512/G, 512/G·9)`` is its own
    matrix (depthwise, G = 512: each channel's 3×3 kernel, a (1, 9) matrix)."""
    torch.manual_seed(1)
    conv = nn.Conv2d(512, 512, 3, groups=groups, bias=False).double()
    start = conv.weight.detach().clone()
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
    rows = 512 // groups
    parts = [nn.Parameter(conv.weight.detach()[g * rows : (g + 1) * rows].clone().contiguous()) for g in range(groups)]
    grads = [torch.randn_like(conv.weight) for _ in range(3)]
    kw = float64(name)
    info = classify_parameters(nn.Sequential(conv, nn.Conv2d(512, 10, 1))).params[0]
    assert (info.kind, info.blocks, info.shape) == ("matrix", groups, (rows, rows * 9))
    stacked = registration(name).build([{"params": [conv.weight], "matrix_blocks": groups}], **kw)
    separate = registration(name).build(parts, **kw)
    _steps(stacked, [conv.weight], [[g] for g in grads])
    _steps(separate, parts, [[g[i * rows : (i + 1) * rows] for i in range(groups)] for g in grads])
    assert_same_step(name, conv.weight.detach(), torch.cat([p.detach() for p in parts]), start)


@pytest.mark.parametrize("name", NAMES)
def test_conv_transpose_steps_as_its_out_by_in_map(name):
    """``ConvTranspose2d(256, 128, 4)`` stores ``(in, out, k, k)``: the map of one input position is
    ``(out·k², in) = (2048, 256)``, the transpose of the stored rows."""
    torch.manual_seed(2)
    deconv = nn.ConvTranspose2d(256, 128, 4, stride=2, bias=False).double()
    info = classify_parameters(nn.Sequential(deconv, nn.Conv2d(128, 3, 1).double())).params[0]
    assert (info.kind, info.transposed, info.shape) == ("matrix", True, (128 * 16, 256))
    flat = nn.Parameter(deconv.weight.detach().reshape(256, -1).T.contiguous())  # (out·k², in)
    start = flat.detach().clone()
    grads = [torch.randn_like(deconv.weight) for _ in range(3)]
    kw = float64(name)
    native = registration(name).build([{"params": [deconv.weight], "transposed": True}], **kw)
    plain = registration(name).build([flat], **kw)
    _steps(native, [deconv.weight], [[g] for g in grads])
    _steps(plain, [flat], [[g.reshape(256, -1).T.contiguous()] for g in grads])
    assert_same_step(name, deconv.weight.detach().reshape(256, -1).T, flat.detach(), start)


def test_parametrized_weights_are_matrices_and_their_gains_other():
    wn = nn.utils.parametrizations.weight_norm(nn.Conv1d(256, 256, 7))
    sn = nn.utils.parametrizations.spectral_norm(nn.Linear(256, 128))
    model = nn.Sequential(wn, nn.Flatten(), sn, nn.Linear(128, 10))
    kinds = classify_parameters(model).kinds()
    assert kinds["0.parametrizations.weight.original1"] == "matrix"  # weight_norm's direction v
    assert kinds["0.parametrizations.weight.original0"] == "other"  # its magnitude g, (256, 1, 1)
    assert kinds["2.parametrizations.weight.original"] == "matrix"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = build_optimizer(model, "muon")
    x = torch.randn(2, 256, 7)
    for _ in range(2):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert torch.isfinite(wn.weight).all()


def test_mixture_of_experts_model_routes_experts_per_expert_and_the_router_to_adamw():
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    model = MixtralForCausalLM(config)
    split = {i.name: i for i in classify_parameters(model).params}
    bank = split["model.layers.0.mlp.experts.gate_up_proj"]
    assert (bank.kind, bank.blocks, bank.shape) == ("matrix", 4, (512, 128))
    assert split["model.layers.0.mlp.experts.down_proj"].shape == (128, 256)
    assert split["model.layers.0.mlp.gate.weight"].kind == "router"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = build_optimizer(model, "muon")
    muon = opt.optimizers[0]
    assert sum(p.numel() for g in muon.param_groups for p in g["params"]) > 0.9 * sum(
        i.param.numel() for i in split.values() if i.kind != "embedding" and i.kind != "head")
    x = torch.randint(0, 128, (2, 16))
    for _ in range(2):
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    state = muon.state[model.model.layers[0].mlp.experts.gate_up_proj]
    assert state["momentum_buffer"].shape == (4, 512, 128)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_expert_bank_resume_is_exact(name, dtype):
    torch.manual_seed(3)
    bank = nn.Parameter((torch.randn(4, 256, 128) * 0.02).to(dtype))
    opt = registration(name).build([{"params": [bank], "matrix_blocks": 4}])
    grads = [torch.randn(4, 256, 128).to(dtype) for _ in range(4)]
    _steps(opt, [bank], [[g] for g in grads[:2]])
    twin = nn.Parameter(bank.detach().clone())
    resumed = registration(name).build([{"params": [twin], "matrix_blocks": 4}])
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))  # as a checkpoint file would: no shared tensors
    _steps(opt, [bank], [[g] for g in grads[2:]])
    _steps(resumed, [twin], [[g] for g in grads[2:]])
    assert torch.equal(bank, twin)


def test_bad_matrix_blocks_names_the_parameter():
    with pytest.raises(ValueError, match="cannot hold matrix_blocks=3"):
        registration("muon").build([{"params": [nn.Parameter(torch.zeros(4, 8, 8))], "matrix_blocks": 3}])
    with pytest.raises(ValueError, match="matrix_blocks"):
        registration("muon").build([{"params": [nn.Parameter(torch.zeros(4, 8, 8))], "matrix_blocks": 0}])


def test_recurrent_layers_are_one_matrix_per_gate():
    """nn.LSTM's ``weight_ih_l{k}``/``weight_hh_l{k}`` stack the i, f, g, o gates' maps along their
    rows (GRU: 3): each gate's ``(H, in)`` block is a matrix, as for expert banks."""
    model = nn.Sequential()
    model.rnn = nn.LSTM(128, 256, num_layers=2, bidirectional=True)
    model.gru = nn.GRU(512, 128)
    model.head = nn.Linear(128, 10)
    infos = {i.name: i for i in classify_parameters(model).params}
    assert (infos["rnn.weight_ih_l0"].kind, infos["rnn.weight_ih_l0"].blocks, infos["rnn.weight_ih_l0"].shape) == ("matrix", 4, (256, 128))
    assert (infos["rnn.weight_hh_l1_reverse"].blocks, infos["rnn.weight_hh_l1_reverse"].shape) == (4, (256, 256))
    assert (infos["gru.weight_ih_l0"].blocks, infos["gru.weight_ih_l0"].shape) == (3, (128, 512))
    assert infos["rnn.bias_ih_l0"].kind == "other" and infos["head.weight"].kind == "head"


def test_encodec_weights_reach_the_matrix_optimizer():
    """EncodecModel (transformers, default config): weight_norm'd convs, ConvTranspose upsamplers and
    LSTMs all go to Muon, with no warning."""
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = build_optimizer(model, "muon")
    held = sum(p.numel() for g in opt.optimizers[0].param_groups for p in g["params"])
    assert held > 0.99 * sum(p.numel() for p in model.parameters())
    audio = torch.randn(1, 1, 2400)
    out = model(audio)
    out.audio_values.square().mean().backward()
    opt.step()

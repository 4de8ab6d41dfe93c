"""Cautious weight decay on AdamW (``CautiousAdamW``, the ``adamw-cautious`` name and the AdamW
part of ``build_optimizer(..., cautious_weight_decay=True)``), against a float64 recurrence."""

from __future__ import annotations

import pytest
import torch

from steepest.optim.baselines import CautiousAdamW, adamw


def _reference(w0, grads, lr, wd, betas=(0.9, 0.999), eps=1e-8, maximize=False):
    """``W ← W − lr·wd·[sign D = sign W]·W − lr·D`` with ``D`` Adam's bias-corrected update, in float64."""
    W, m, v = w0.double().clone(), torch.zeros_like(w0, dtype=torch.float64), torch.zeros_like(w0, dtype=torch.float64)
    for t, g in enumerate(grads, 1):
        g = -g.double() if maximize else g.double()
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        D = (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
        W = W - lr * wd * (torch.sign(D) == torch.sign(W)).double() * W - lr * D
    return W


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("tensor_lr", [False, True])
def test_matches_float64_recurrence(dtype, tol, maximize, tensor_lr):
    torch.manual_seed(0)
    w = torch.randn(192, 128, dtype=dtype, requires_grad=True)
    w0 = w.detach().clone()
    grads = [torch.randn(192, 128, dtype=dtype) for _ in range(6)]
    lr = torch.tensor(0.01) if tensor_lr else 0.01
    opt = adamw([w], lr=lr, weight_decay=0.5, cautious_weight_decay=True, maximize=maximize)
    assert isinstance(opt, CautiousAdamW)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    ref = _reference(w0, grads, float(lr), 0.5, maximize=maximize)  # a float32 tensor lr is 0.01 rounded
    # float32: a few ulps of the weights' scale per step
    torch.testing.assert_close(w.detach().double(), ref, rtol=0, atol=tol * 6)
    assert opt.param_groups[0]["weight_decay"] == 0.5


def test_masks_decay_where_signs_differ():
    """Against plain AdamW: the entries where update and weight agree in sign decay the same, the others not at all."""
    torch.manual_seed(1)
    w = torch.randn(128, 128, dtype=torch.float64, requires_grad=True)
    g = torch.randn(128, 128, dtype=torch.float64)
    plain = w.detach().clone().requires_grad_()
    ca, pa = adamw([w], lr=0.1, weight_decay=0.5, cautious_weight_decay=True), adamw([plain], lr=0.1, weight_decay=0.5)
    w.grad, plain.grad = g.clone(), g.clone()
    w0 = w.detach().clone()
    ca.step()
    pa.step()
    agree = torch.sign(g) == torch.sign(w0)
    assert 0.3 < agree.double().mean() < 0.7
    torch.testing.assert_close(w.detach()[agree], plain.detach()[agree], rtol=0, atol=1e-14)
    undecayed = plain.detach() + 0.1 * 0.5 * w0  # plain AdamW's update without its decay
    torch.testing.assert_close(w.detach()[~agree], undecayed[~agree], rtol=0, atol=1e-14)


def test_without_decay_equals_adamw_and_skips_absent_gradients():
    torch.manual_seed(2)
    a = torch.randn(130, 64, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    idle = torch.randn(5, requires_grad=True)
    idle0 = idle.detach().clone()
    oa = adamw([a, idle], lr=0.01, weight_decay=0.0, cautious_weight_decay=True)
    ob = torch.optim.AdamW([b], lr=0.01, weight_decay=0.0, fused=True)
    for _ in range(3):
        g = torch.randn(130, 64)
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(idle.detach(), idle0)


def test_bad_flag_names_the_parameter():
    with pytest.raises(ValueError, match="cautious_weight_decay"):
        adamw([torch.zeros(3, requires_grad=True)], lr=0.01, cautious_weight_decay="yes")

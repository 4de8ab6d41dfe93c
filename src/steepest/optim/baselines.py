"""torch's own optimizers as registered baselines: SGD with Nesterov momentum and fused AdamW.

Both take every parameter (``matrix=False``); :func:`adamw` is also the AdamW part that
:func:`~steepest.optim.build.build_optimizer` gives the non-matrix parameters.
"""

from __future__ import annotations

import torch

from ..validation import check_bool
from .registry import Registration, register

__all__ = ["adamw", "sgd", "CautiousAdamW"]


def _tensors(params) -> list[torch.Tensor]:
    return [p[1] if isinstance(p, tuple) else p for p in params]


def _fused_supported(params: list[torch.Tensor]) -> bool:
    return all(p.device.type in ("cuda", "cpu") and p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) for p in params)


@register(Registration("sgd", "SGD with Nesterov momentum on every parameter (Euclidean steepest descent)", 0.05, color="#bcbd22", matrix=False))
def sgd(params, lr: float, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0, **kw) -> torch.optim.SGD:
    """``torch.optim.SGD`` with Nesterov momentum 0.9."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, **kw)


@register(
    Registration("adamw", "torch.optim.AdamW(fused=True) on every parameter", 1e-3, color="#000000", matrix=False),
    Registration("adamw-cautious", "AdamW with cautious weight decay (decay only where sign(update) = sign(weight))", 1e-3,
                 family="adamw", matrix=False, options={"cautious_weight_decay": True}),
)
def adamw(
    params, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.01, eps: float = 1e-8, cautious_weight_decay: bool = False, **kw
) -> torch.optim.AdamW:
    """``torch.optim.AdamW``, fused where the parameters' device and dtype allow it;
    :class:`CautiousAdamW` with ``cautious_weight_decay=True``."""
    params = list(params)
    fused = _fused_supported(_tensors(params))
    check_bool(cautious_weight_decay, "cautious_weight_decay")
    cls = CautiousAdamW if cautious_weight_decay else torch.optim.AdamW
    return cls(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, fused=fused, **kw)


class CautiousAdamW(torch.optim.AdamW):
    """AdamW with cautious weight decay: the decay acts only where the Adam update ``D`` and the
    weight have the same sign, ``W ← W − lr·wd·[sign D = sign W]·W − lr·D`` (modded-nanogpt
    record #43; Chen et al. 2025, "Cautious Weight Decay", arXiv 2510.12402).

    ``D = m̂ / (√v̂ + ε)`` has the sign of the new first moment ``m = β₁·m + (1 − β₁)·g``, so each
    step first decays the masked entries (one parameter's temporary at a time), then runs torch's
    (fused) AdamW without decay, in torch's order (decay, then update). Its ``state_dict`` is AdamW's.
    """

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        decays = [g["weight_decay"] for g in self.param_groups]
        for group, wd in zip(self.param_groups, decays):
            if wd:
                self._cautious_decay(group, wd)
        try:
            for group in self.param_groups:
                group["weight_decay"] = 0.0
            super().step()
        finally:
            for group, wd in zip(self.param_groups, decays):
                group["weight_decay"] = wd
        return loss

    def _cautious_decay(self, group: dict, wd: float) -> None:
        """``W ← W − lr·wd·[sign m = sign W]·W`` with ``m`` the first moment this step will hold."""
        beta1 = group["betas"][0]
        lr = group["lr"].reshape(()) if isinstance(group["lr"], torch.Tensor) else group["lr"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = -p.grad if group["maximize"] else p.grad
            m = self.state[p].get("exp_avg")
            m_new = g * (1 - beta1) if m is None else torch.lerp(m, g.to(m.dtype), 1 - beta1)
            mask = torch.sign(m_new) == torch.sign(p)
            p.sub_(torch.where(mask, p, 0) * (lr * wd))

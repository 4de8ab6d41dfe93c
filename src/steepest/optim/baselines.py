"""torch's own optimizers as registered baselines: SGD with Nesterov momentum and fused AdamW.

Both take every parameter (``matrix=False``); :func:`adamw` is also the AdamW part that
:func:`~steepest.optim.build.build_optimizer` gives the non-matrix parameters.
"""

from __future__ import annotations

import torch

from .registry import Registration, register

__all__ = ["adamw", "sgd"]


def _tensors(params) -> list[torch.Tensor]:
    return [p[1] if isinstance(p, tuple) else p for p in params]


def _fused_supported(params: list[torch.Tensor]) -> bool:
    return all(p.device.type in ("cuda", "cpu") and p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) for p in params)


@register(Registration("sgd", "SGD with Nesterov momentum on every parameter (Euclidean steepest descent)", 0.05, color="#bcbd22", matrix=False))
def sgd(params, lr: float, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0, **kw) -> torch.optim.SGD:
    """``torch.optim.SGD`` with Nesterov momentum 0.9."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, **kw)


@register(Registration("adamw", "torch.optim.AdamW(fused=True) on every parameter", 1e-3, color="#000000", matrix=False))
def adamw(params, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.01, eps: float = 1e-8, **kw) -> torch.optim.AdamW:
    """``torch.optim.AdamW``, fused where the parameters' device and dtype allow it."""
    params = list(params)
    fused = _fused_supported(_tensors(params))
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, fused=fused, **kw)

"""Other projects' optimizers, registered for side-by-side comparison with ours.

Importing :mod:`steepest.bench` registers them (after the package's own optimizers, so that
``steepest-bench list`` shows them last). Each gets the flat list of hidden matrices as stored
(no ``transposed`` view) and AdamW for the rest, like ours. ``torch-muon`` needs a torch with
``torch.optim.Muon``; the others come with the optional dependency group ``peers``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from steepest.optim.registry import Registration, add, register

__all__: list[str] = []


@register(Registration(
    "torch-muon", "peer: torch.optim.Muon (Newton-Schulz in bf16, one matrix at a time) on hidden 2-D weights", 0.02,
    family="spectral", color="#8c1d18", peer=True, available=lambda: hasattr(torch.optim, "Muon"),
    install_hint="unavailable: it needs torch.optim.Muon (torch >= 2.9): pip install -U torch",
))  # fmt: skip
def _torch_muon(params, lr: float, weight_decay: float = 0.0, **kw) -> torch.optim.Optimizer:
    params = list(params)
    bad = [n for n, p in params if p.ndim != 2]
    if bad:
        raise ValueError(
            f"torch.optim.Muon only supports 2-D parameters, and {bad[0]!r} is not (conv weights?); "
            "use 'muon', which views conv weights as matrices"
        )
    return torch.optim.Muon([p for _, p in params], lr=lr, weight_decay=weight_decay, adjust_lr_fn="original", **kw)


def _installed(module: str) -> Callable[[], bool]:
    def check() -> bool:
        return importlib.util.find_spec(module) is not None

    return check


def _heavyball(cls_name: str) -> Callable[..., torch.optim.Optimizer]:
    def factory(params, lr: float, **kw):
        import heavyball

        return getattr(heavyball, cls_name)([p for _, p in params], lr=lr, **kw)

    return factory


def _pto_shampoo(params, lr: float, **kw) -> torch.optim.Optimizer:
    import pytorch_optimizer

    return pytorch_optimizer.Shampoo([p for _, p in params], lr=lr, **kw)


add(Registration(
    "heavyball-muon", "peer: heavyball.Muon (optional extra 'peers')", 0.02,
    factory=_heavyball("Muon"), peer=True, extra="peers", available=_installed("heavyball"),
))  # fmt: skip
add(Registration(
    "heavyball-soap", "peer: heavyball.SOAP, Shampoo-preconditioned Adam (optional extra 'peers')", 3e-3,
    factory=_heavyball("SOAP"), peer=True, extra="peers", available=_installed("heavyball"),
))  # fmt: skip
add(Registration(
    "pytorch-optimizer-shampoo", "peer: pytorch_optimizer.Shampoo (optional extra 'peers')", 1e-3,
    factory=_pto_shampoo, peer=True, extra="peers", available=_installed("pytorch_optimizer"),
))  # fmt: skip

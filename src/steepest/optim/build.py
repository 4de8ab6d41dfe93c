"""``build_optimizer``: one call from a model to an optimizer, with the Muon seed's split.

Hidden 2-D (and conv) weights go to the matrix optimizer; embeddings, the output head and all
1-D parameters go to AdamW (KellerJordan/Muon's ``MuonWithAuxAdam`` split).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["OptimizerSpec", "OPTIMIZERS", "optimizer_names", "split_parameters", "build_optimizer"]


@dataclass(frozen=True)
class OptimizerSpec:
    """A named optimizer the harness can build: one line of description and a default lr."""

    name: str
    description: str
    default_lr: float
    factory: Callable[..., torch.optim.Optimizer] = field(repr=False)
    matrix: bool = True  # False: every parameter goes to this optimizer (no AdamW split)
    available: Callable[[], bool] = field(default=lambda: True, repr=False)


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def _register(spec: OptimizerSpec) -> None:
    OPTIMIZERS[spec.name] = spec


def optimizer_names(include_unavailable: bool = False) -> list[str]:
    """Names accepted by :func:`build_optimizer` (optional peers only when installed)."""
    return [n for n, s in OPTIMIZERS.items() if include_unavailable or s.available()]


def split_parameters(
    model: nn.Module, head: Iterable[nn.Parameter | str] | None = None
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Split ``model``'s trainable parameters into (matrix, other), each as (name, param).

    ``other`` holds 1-D parameters, every ``nn.Embedding`` weight and the output head. The head is
    ``head`` when given (parameters or their names); otherwise the last ``nn.Linear`` whose
    ``out_features`` equals an embedding's vocabulary size, or, with no embedding, the last
    ``nn.Linear`` of the model (a classifier). Tied parameters are counted once.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    other_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            other_ids.add(id(module.weight))
    if head is not None:
        by_name = dict(named)
        for h in head:
            if isinstance(h, str):
                if h not in by_name:
                    raise ValueError(
                        f"head: no trainable parameter named {h!r}; names are e.g. {list(by_name)[:5]}"
                    )
                other_ids.add(id(by_name[h]))
            else:
                other_ids.add(id(h))
    else:
        vocab = {m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)}
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        candidates = [m for m in linears if m.out_features in vocab] if vocab else linears
        if candidates:
            other_ids.add(id(candidates[-1].weight))
    matrix, other, seen = [], [], set()
    for name, p in named:
        if id(p) in seen:
            continue
        seen.add(id(p))
        (other if p.ndim < 2 or id(p) in other_ids else matrix).append((name, p))
    return matrix, other


def build_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float | None = None,
    adamw_lr: float = 3e-4,
    adamw_betas: tuple[float, float] = (0.9, 0.95),
    adamw_weight_decay: float = 0.0,
    head: Iterable[nn.Parameter | str] | None = None,
    **options,
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` for ``model``.

    Matrix optimizers (``muon``, ``neon-nuclear``, ...) get the hidden 2-D/conv weights and a fused
    AdamW (``adamw_lr``, ``adamw_betas``) gets the rest; the result is one optimizer whose
    ``state_dict`` holds both and that one LR scheduler drives. ``sgd`` and ``adamw`` take every
    parameter. ``lr`` defaults to the optimizer's registered default; ``options`` go to its class.
    """
    if name not in OPTIMIZERS or not OPTIMIZERS[name].available():
        raise ValueError(
            f"unknown optimizer name {name!r}; valid names: {', '.join(optimizer_names())}"
        )
    spec = OPTIMIZERS[name]
    lr = spec.default_lr if lr is None else lr
    if not spec.matrix:
        params = [p for p in model.parameters() if p.requires_grad]
        return spec.factory(params, lr=lr, **options)
    from .combined import CombinedOptimizer

    matrix, other = split_parameters(model, head)
    optimizers = []
    if matrix:
        optimizers.append(spec.factory([p for _, p in matrix], lr=lr, **options))
    if other:
        optimizers.append(
            _adamw([p for _, p in other], lr=adamw_lr, betas=adamw_betas, weight_decay=adamw_weight_decay)
        )
    return CombinedOptimizer(optimizers)


def _fused_supported(params: list[torch.Tensor]) -> bool:
    return all(p.device.type in ("cuda", "cpu") and p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) for p in params)


def _adamw(params, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.01, eps: float = 1e-8, **kw) -> torch.optim.AdamW:
    """``torch.optim.AdamW``, fused where the parameters' device and dtype allow it."""
    params = list(params)
    fused = _fused_supported(params)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, fused=fused, **kw)


def _sgd(params, lr: float, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0, **kw) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, **kw)


_register(OptimizerSpec("sgd", "SGD with Nesterov momentum on every parameter (Euclidean steepest descent)", 0.05, _sgd, matrix=False))
_register(OptimizerSpec("adamw", "torch.optim.AdamW(fused=True) on every parameter", 1e-3, _adamw, matrix=False))

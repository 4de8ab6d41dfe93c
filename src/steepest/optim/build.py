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
    needs_model: bool = False  # the factory takes model=... (Newton-Muon installs input hooks)
    peer: bool = False  # another project's optimizer, registered for side-by-side comparison


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
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return spec.factory(params, lr=lr, **options)
    from .combined import CombinedOptimizer

    matrix, other = split_parameters(model, head)
    optimizers = []
    if matrix:
        if spec.needs_model:
            options = {"model": model, **options}
        optimizers.append(spec.factory(_named(matrix), lr=lr, **options))
    if other:
        optimizers.append(
            _adamw(_named(other), lr=adamw_lr, betas=adamw_betas, weight_decay=adamw_weight_decay)
        )
    return CombinedOptimizer(optimizers)


def _named(pairs: list[tuple[str, nn.Parameter]]) -> list[tuple[str, nn.Parameter]]:
    """Named parameters, so that errors name them (torch.optim accepts (name, param) pairs)."""
    return list(pairs)


def _tensors(params) -> list[torch.Tensor]:
    return [p[1] if isinstance(p, tuple) else p for p in params]


def _fused_supported(params: list[torch.Tensor]) -> bool:
    return all(p.device.type in ("cuda", "cpu") and p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) for p in params)


def _adamw(params, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.01, eps: float = 1e-8, **kw) -> torch.optim.AdamW:
    """``torch.optim.AdamW``, fused where the parameters' device and dtype allow it."""
    params = list(params)
    fused = _fused_supported(_tensors(params))
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, fused=fused, **kw)


def _sgd(params, lr: float, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0, **kw) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, **kw)


def _steepest(cls_name: str, **fixed):
    def factory(params, **kw):
        from . import muon, neon, newton_muon, shampoo, sign

        classes = {"Muon": muon.Muon, "Neon": neon.Neon, "NewtonMuon": newton_muon.NewtonMuon, "Shampoo": shampoo.Shampoo, "SignDescent": sign.SignDescent}
        return classes[cls_name](params, **{**fixed, **kw})

    return factory


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
        import importlib.util

        return importlib.util.find_spec(module) is not None

    return check


def _heavyball(cls_name: str):
    def factory(params, lr: float, **kw):
        import heavyball

        return getattr(heavyball, cls_name)([p for _, p in params], lr=lr, **kw)

    return factory


def _pto_shampoo(params, lr: float, **kw):
    import pytorch_optimizer

    return pytorch_optimizer.Shampoo([p for _, p in params], lr=lr, **kw)


_register(OptimizerSpec("muon", "Muon: spectral-norm steepest descent, msgn of Nesterov momentum by Polar Express (batched)", 0.02, _steepest("Muon")))
_register(OptimizerSpec("neon-nuclear", "Neon, nuclear norm: rank-1 update sigma1*u1*v1^T by warm-started power iteration", 0.5, _steepest("Neon", mode="nuclear")))
_register(OptimizerSpec("neon-fstar", "Neon, F* norm: low-rank soft-thresholded update U[S-tau]+V^T, adaptive rank", 0.5, _steepest("Neon", mode="fstar")))
_register(OptimizerSpec("neon-nuclear-drop", "Neon nuclear with sigma dropped: u1*v1^T, as in the Neon authors' code", 0.3, _steepest("Neon", mode="nuclear", sigma="drop")))
_register(OptimizerSpec("neon-fstar-drop", "Neon F* with sigma dropped: U[S-tau]+V^T scaled to spectral norm 1", 0.3, _steepest("Neon", mode="fstar", sigma="drop")))


def _dion(params, **kw) -> torch.optim.Optimizer:
    from .dion import Dion

    return Dion(params, **kw)


_register(OptimizerSpec("dion", "Dion: rank-r orthonormal update P Q^T by one warm power iteration, error feedback in the momentum (r = min(m,n)/4)", 0.02, _dion))
_register(OptimizerSpec("newton-muon", "Newton-Muon: msgn(G (ZZ^T)^-1) with input second moments from forward hooks", 0.02, _steepest("NewtonMuon"), needs_model=True))
_register(OptimizerSpec("shampoo", "Shampoo: L^-1/4 G R^-1/4 with accumulated statistics, grafted to Adam's norm", 1e-3, _steepest("Shampoo")))
_register(OptimizerSpec("sign", "Sign descent with momentum: l1->linf steepest descent (Adam without EMA)", 1e-3, _steepest("SignDescent")))
_register(OptimizerSpec("sgd", "SGD with Nesterov momentum on every parameter (Euclidean steepest descent)", 0.05, _sgd, matrix=False))
_register(OptimizerSpec("adamw", "torch.optim.AdamW(fused=True) on every parameter", 1e-3, _adamw, matrix=False))
_register(OptimizerSpec("torch-muon", "peer: torch.optim.Muon (Newton-Schulz in bf16, one matrix at a time) on hidden 2-D weights", 0.02, _torch_muon, available=lambda: hasattr(torch.optim, "Muon"), peer=True))
_register(OptimizerSpec("heavyball-muon", "peer: heavyball.Muon (optional extra 'peers')", 0.02, _heavyball("Muon"), available=_installed("heavyball"), peer=True))
_register(OptimizerSpec("heavyball-soap", "peer: heavyball.SOAP, Shampoo-preconditioned Adam (optional extra 'peers')", 3e-3, _heavyball("SOAP"), available=_installed("heavyball"), peer=True))
_register(OptimizerSpec("pytorch-optimizer-shampoo", "peer: pytorch_optimizer.Shampoo (optional extra 'peers')", 1e-3, _pto_shampoo, available=_installed("pytorch_optimizer"), peer=True))

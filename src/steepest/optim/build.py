"""``build_optimizer``: one call from a model to an optimizer, with the Muon seed's split.

Which parameters are matrices is decided by :mod:`steepest.optim.split` (hidden weights of
linear-like modules, seen as ``(out, in)``); the matrix optimizer gets those, a fused AdamW the
rest (embeddings, position embeddings and tokens, the output head, 1-D parameters), as in
KellerJordan/Muon's ``MuonWithAuxAdam``. A norm can be chosen per module: ``name`` may map
parameter-name patterns to optimizers (``{"*.mlp.*": "neon-fstar", "*": "muon"}``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import torch
from torch import nn

from .split import ParamInfo, classify_parameters, split_parameters

__all__ = ["OptimizerSpec", "OPTIMIZERS", "optimizer_names", "split_parameters", "build_optimizer", "parse_routes", "register_routes"]


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


def _spec(name: str, where: str = "optimizer name") -> OptimizerSpec:
    if not isinstance(name, str) or name not in OPTIMIZERS or not OPTIMIZERS[name].available():
        raise ValueError(f"unknown {where} {name!r}; valid names: {', '.join(optimizer_names())}")
    return OPTIMIZERS[name]


def parse_routes(text: str) -> dict[str, str]:
    """Routes from a string ``"PATTERN=NAME+PATTERN=NAME+NAME"`` (the harness's form; a last
    ``NAME`` without a pattern is the ``"*"`` route), e.g. ``"*.mlp.*=neon-fstar+muon"``."""
    routes: dict[str, str] = {}
    for part in text.split("+"):
        pattern, _, opt = part.rpartition("=")
        pattern, opt = (pattern.strip() or "*"), opt.strip()
        if not opt:
            raise ValueError(f"bad route {part!r} in {text!r}: write PATTERN=OPTIMIZER, e.g. '*.mlp.*=neon-fstar+muon'")
        if pattern in routes:
            raise ValueError(f"route pattern {pattern!r} appears twice in {text!r}")
        routes[pattern] = opt
    _check_routes(routes)
    return routes


def _check_routes(routes: Mapping[str, str]) -> None:
    if not routes:
        raise ValueError("routes must map at least one parameter-name pattern to an optimizer, e.g. {'*': 'muon'}")
    for pattern, opt in routes.items():
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"route patterns must be non-empty strings (fnmatch patterns on parameter names), got {pattern!r}")
        _spec(opt, f"optimizer name in route {pattern!r}:")


def register_routes(name: str, routes: Mapping[str, str] | str, description: str | None = None) -> str:
    """Register per-module ``routes`` under ``name`` so that the harness can run them like any
    optimizer; its lr is a multiplier on each route's default lr (default 1.0). Returns ``name``."""
    routes = parse_routes(routes) if isinstance(routes, str) else dict(routes)
    _check_routes(routes)
    needs_model = any(OPTIMIZERS[o].needs_model for o in routes.values())

    def factory(params, **kw):  # pragma: no cover - build_optimizer handles routed specs itself
        raise TypeError("a routed optimizer is built by build_optimizer(model, name)")

    desc = description or "routes: " + ", ".join(f"{p} -> {o}" for p, o in routes.items())
    OPTIMIZERS[name] = OptimizerSpec(name, desc, 1.0, factory, needs_model=needs_model)
    _ROUTES[name] = routes
    return name


_ROUTES: dict[str, dict[str, str]] = {}


def build_optimizer(
    model: nn.Module,
    name: str | Mapping[str, str],
    *,
    lr: float | Mapping[str, float] | None = None,
    adamw_lr: float = 3e-4,
    adamw_betas: tuple[float, float] = (0.9, 0.95),
    adamw_weight_decay: float = 0.0,
    head: Iterable[nn.Parameter | nn.Module | str] | None = None,
    inputs: str = "matrix",
    **options,
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` for ``model``: one optimizer whose ``state_dict`` holds every
    part and that one LR scheduler drives.

    ``name`` is a registered name (``muon``, ``neon-fstar``, ...; ``sgd`` and ``adamw`` take every
    parameter), or *routes*: a mapping from fnmatch patterns on parameter names to names, first
    match wins (``{"*.mlp.*": "neon-fstar", "*": "muon"}``; the string form
    ``"*.mlp.*=neon-fstar+muon"`` too, see :func:`parse_routes`). The split
    (:func:`steepest.optim.split.classify_parameters`, with ``head`` and ``inputs``) is the same
    either way: routes choose the optimizer of each *matrix*; every other parameter goes to a fused
    AdamW (``adamw_lr``, ``adamw_betas``, ``adamw_weight_decay``), and so do the matrices routed
    to ``"adamw"``; matrices routed to ``"sgd"`` get SGD. Weights stored ``(in, out)`` (HF
    ``Conv1D``) go to our optimizers in a ``transposed=True`` param group, so each sees ``(out, in)``
    (peers see them as stored).

    ``lr``: for one name, its lr (default: the registered default). With routes: ``None`` (each
    route's default), a mapping ``{optimizer name: lr}``, or a float that multiplies every route's
    default (one number tunes the mix, as the harness sweeps it). ``options`` go to every
    matrix optimizer's class.
    """
    if isinstance(name, str) and name in _ROUTES:
        routes, multiplier = _ROUTES[name], (1.0 if lr is None else lr)
    elif isinstance(name, str) and ("=" in name or "+" in name):
        routes, multiplier = parse_routes(name), (1.0 if lr is None else lr)
    elif isinstance(name, Mapping):
        routes, multiplier = dict(name), (1.0 if lr is None or isinstance(lr, Mapping) else lr)
        _check_routes(routes)
    else:
        spec = _spec(name)
        if not spec.matrix:
            params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            return spec.factory(params, lr=spec.default_lr if lr is None else lr, **options)
        routes, multiplier = {"*": name}, None
    rates = dict(lr) if isinstance(lr, Mapping) else {}
    unknown = set(rates) - set(routes.values())
    if unknown:
        raise ValueError(f"lr names {sorted(unknown)}, which no route uses; routes use {sorted(set(routes.values()))}")

    from .combined import CombinedOptimizer

    split = classify_parameters(model, head, inputs=inputs)
    routed: dict[str, list[ParamInfo]] = {}
    for info in split.matrix:
        opt = next((o for pattern, o in routes.items() if any(fnmatchcase(n, pattern) for n in info.aliases)), None)
        if opt is None:
            raise ValueError(f"no route matches matrix parameter {info.name!r}; add a catch-all route, e.g. {{..., '*': 'muon'}}")
        routed.setdefault(opt, []).append(info)
    other = [(i.name, i.param) for i in split.other] + [(i.name, i.param) for i in routed.pop("adamw", [])]
    optimizers = []
    for opt, infos in routed.items():
        spec = OPTIMIZERS[opt]
        if opt in rates:
            rate = rates[opt]
        elif multiplier is None:
            rate = spec.default_lr if lr is None else lr
        else:
            rate = multiplier * spec.default_lr
        if not spec.matrix:
            optimizers.append(spec.factory([(i.name, i.param) for i in infos], lr=rate))
            continue
        kw = {"model": model, **options} if spec.needs_model else options
        optimizers.append(spec.factory(_groups(infos, spec), lr=rate, **kw))
    if other:
        optimizers.append(_adamw(other, lr=adamw_lr, betas=adamw_betas, weight_decay=adamw_weight_decay))
    return CombinedOptimizer(optimizers)


def _groups(infos: list[ParamInfo], spec: OptimizerSpec) -> list:
    """The named matrices for ``spec``'s factory: a flat list, or with weights stored ``(in, out)``
    two param groups, the second with ``transposed=True`` (peers get the flat list)."""
    plain = [(i.name, i.param) for i in infos if not i.transposed]
    flipped = [(i.name, i.param) for i in infos if i.transposed]
    if spec.peer or not flipped:
        return plain + flipped
    return ([{"params": plain}] if plain else []) + [{"params": flipped, "transposed": True}]


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
_register(OptimizerSpec("muon-rms-to-rms", "Muon with scale='rms_to_rms': sqrt(fan_out/fan_in)*msgn, the modular seed's width-independent RMS->RMS step", 0.02, _steepest("Muon", scale="rms_to_rms")))
_register(OptimizerSpec("muon-match-adamw", "Muon with scale='match_adamw': 0.2*sqrt(max(m,n))*msgn, update RMS ~0.2 like AdamW (Moonlight)", 3e-3, _steepest("Muon", scale="match_adamw")))
# Default rates (what build_optimizer uses without lr=): Muon's and Dion's 0.02 and the Neon rates below are
# the candidates that lose the least of the achievable improvement on the worst of the harness's tasks,
# at the end and early in the run (docs/results/defaults.md, from the committed sweeps).
_register(OptimizerSpec("neon-nuclear", "Neon, nuclear norm: rank-1 update sigma1*u1*v1^T by warm-started power iteration", 1.0, _steepest("Neon", mode="nuclear")))
_register(OptimizerSpec("neon-fstar", "Neon, F* norm: low-rank soft-thresholded update U[S-tau]+V^T, adaptive rank", 1.0, _steepest("Neon", mode="fstar")))
_register(OptimizerSpec("neon-nuclear-drop", "Neon nuclear with sigma dropped: u1*v1^T, as in the Neon authors' code", 0.06, _steepest("Neon", mode="nuclear", sigma="drop")))
_register(OptimizerSpec("neon-fstar-drop", "Neon F* with sigma dropped: U[S-tau]+V^T scaled to spectral norm 1", 0.03, _steepest("Neon", mode="fstar", sigma="drop")))
_register(OptimizerSpec("neon-nuclear-ef", "Neon nuclear with Dion's error feedback: B <- B + (1-mu)G, D = sigma1*u1*v1^T of B, B <- B - (1-mu)*sigma1*u1*v1^T", 0.5, _steepest("Neon", mode="nuclear", nesterov=False, error_feedback=True)))
_register(OptimizerSpec("neon-fstar-ef", "Neon F* with Dion's error feedback: the captured part U_r S_r V_r^T leaves the momentum, (1-mu) of it each step", 1.0, _steepest("Neon", mode="fstar", nesterov=False, error_feedback=True)))


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

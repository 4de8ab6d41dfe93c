"""``build_optimizer``: one call from a model to an optimizer, with the Muon seed's split.

Which parameters are matrices is decided by :mod:`steepest.optim.split` (hidden weights of
linear-like modules, seen as ``(out, in)``); the matrix optimizer gets those, a fused AdamW the
rest (embeddings, position embeddings and tokens, the output head, 1-D parameters), as in
KellerJordan/Muon's ``MuonWithAuxAdam``. A norm can be chosen per module: ``name`` may map
parameter-name patterns to optimizers (``{"*.mlp.*": "neon-fstar", "*": "muon"}``).
"""

from __future__ import annotations

import warnings

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

# The optimizer modules register their names on import, in this order (``steepest-bench list``'s).
from . import muon, neon, dion, newton_muon, shampoo, sign, baselines  # noqa: F401
from .baselines import adamw as _adamw
from .combined import CombinedOptimizer
from .registry import OPTIMIZERS, Registration, add, optimizer_names, register_variant, top_level
from .split import ParamInfo, classify_parameters, split_parameters
from .modular import role_groups

__all__ = ["OptimizerSpec", "OPTIMIZERS", "optimizer_names", "split_parameters", "build_optimizer", "parse_routes", "register_routes"]

OptimizerSpec = Registration  # the former name of a registration


def _spec(name: str, where: str = "optimizer name") -> Registration:
    if isinstance(name, str) and name not in OPTIMIZERS and "(" in name:
        name = register_variant(name)  # "muon(weight_decay=0.1)": a registered name with options
    if not isinstance(name, str) or name not in OPTIMIZERS or not OPTIMIZERS[name].available():
        raise ValueError(f"unknown {where} {name!r}; valid names: {', '.join(optimizer_names())}")
    return OPTIMIZERS[name]


def parse_routes(text: str) -> dict[str, str]:
    """Routes from a string ``"PATTERN=NAME+PATTERN=NAME+NAME"`` (the harness's form; a last
    ``NAME`` without a pattern is the ``"*"`` route), e.g. ``"*.mlp.*=neon-fstar+muon"``."""
    routes: dict[str, str] = {}
    for part in text.split("+"):
        cut = _top_level_equals(part)
        pattern, opt = (part[:cut], part[cut + 1:]) if cut >= 0 else ("", part)
        pattern, opt = (pattern.strip() or "*"), opt.strip()
        if not opt:
            raise ValueError(f"bad route {part!r} in {text!r}: write PATTERN=OPTIMIZER, e.g. '*.mlp.*=neon-fstar+muon'")
        if pattern in routes:
            raise ValueError(f"route pattern {pattern!r} appears twice in {text!r}")
        routes[pattern] = opt
    _check_routes(routes)
    return routes


def _top_level_equals(text: str) -> int:
    """Index of the first ``=`` outside parentheses (variant options are inside), else -1."""
    return next(iter(top_level(text, "=")), -1)


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
    add(Registration(name, desc, 1.0, factory=factory, needs_model=needs_model), replace=True)
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
    if not _is_routes(name):
        spec = _spec(name)
        if not spec.matrix:
            params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            return spec.build(params, lr=spec.default_lr if lr is None else lr, **options)
    routes, multiplier = _routes_of(name, lr)
    rates = _route_rates(lr, routes)
    routed, other = _route_matrices(model, routes, head, inputs)
    optimizers = [_build_part(model, opt, infos, _rate(opt, lr, rates, multiplier), options) for opt, infos in routed.items()]
    adamw_options = dict(lr=adamw_lr, betas=adamw_betas, weight_decay=adamw_weight_decay, cautious_weight_decay=_cautious(name, options))
    if other:
        optimizers.append(_adamw(other, **adamw_options))
    combined = CombinedOptimizer(optimizers)
    parts = dict(zip([*routed, *(["adamw"] if other else [])], optimizers))
    combined.router = _Router(model, routes, head, inputs, parts, lambda opt: _rate(opt, lr, rates, multiplier), options, adamw_options)
    return combined


def _cautious(name: str | Mapping[str, str], options: Mapping[str, Any]) -> bool:
    """Whether the AdamW part decays cautiously: ``cautious_weight_decay`` as given to
    :func:`build_optimizer`, else as the (single, e.g. variant) name's registration fixes it."""
    if "cautious_weight_decay" in options:
        return bool(options["cautious_weight_decay"])
    return not _is_routes(name) and bool(_spec(name).options.get("cautious_weight_decay", False))


class _Router:
    """Routes parameters added later (``CombinedOptimizer.add_param_group``, e.g. unfreezing) by
    the same split and routes as :func:`build_optimizer`, building a part that does not exist yet."""

    def __init__(self, model, routes, head, inputs, parts, rate, options, adamw_options) -> None:
        self.model, self.routes, self.head, self.inputs = model, routes, head, inputs
        self.parts, self.rate, self.options, self.adamw_options = parts, rate, options, adamw_options

    def __call__(self, param_group: dict) -> list[tuple[str, torch.optim.Optimizer | None, dict, list[ParamInfo]]]:
        """``(optimizer name, its part or None, group, infos)`` for each part the group's parameters go to."""
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        split = classify_parameters(self.model, self.head, inputs=self.inputs)
        by_id = {id(i.param): i for i in split.params}
        pieces: dict[tuple[str, bool], list[ParamInfo]] = {}
        for p in params:
            info = by_id.get(id(p))
            if info is None:
                raise ValueError("add_param_group: a parameter is not a trainable parameter of the model build_optimizer was given; set requires_grad=True first, or add it to that model")
            opt = _non_matrix_route(info, self.routes)
            if info.kind == "matrix":
                opt = next((o for pattern, o in self.routes.items() if any(fnmatchcase(n, pattern) for n in info.aliases)), "adamw")
            layout = (info.transposed, info.blocks) if opt != "adamw" else (False, 1)
            pieces.setdefault((opt, layout), []).append(info)
        extra = {k: v for k, v in param_group.items() if k not in ("params", "param_names")}
        out = []
        for (opt, layout), infos in pieces.items():
            group = {**extra, "params": [i.param for i in infos], "param_names": [i.name for i in infos]}
            if not OPTIMIZERS[opt].peer:
                group.update(layout_options(*layout))
            out.append((opt, self.parts.get(opt), group, infos))
        return (piece for entry in out for piece in self._by_role(*entry))  # lazily: a part built for one role serves the next

    def _by_role(self, opt: str, part, group: dict, infos: list[ParamInfo]):
        """An optimizer that takes roles (``Registration.roles``) gets one group per role."""
        if not OPTIMIZERS[opt].roles:
            yield opt, part, group, infos
            return
        extra = {k: v for k, v in group.items() if k not in ("params", "param_names", "transposed", "matrix_blocks")}
        by_id = {id(i.param): i for i in infos}
        for g in role_groups(infos):
            params = [p for _, p in g["params"]]
            options = {k: v for k, v in g.items() if k != "params"}
            yield opt, self.parts.get(opt), {**extra, **options, "params": params, "param_names": [n for n, _ in g["params"]]}, [by_id[id(p)] for p in params]

    def new_part(self, opt: str, infos: list[ParamInfo], group: dict) -> torch.optim.Optimizer:
        """The part for ``opt`` built on its first parameters (the group's own options apply)."""
        if opt == "adamw":
            kw = {**self.adamw_options, **{k: v for k, v in group.items() if k in ("lr", "betas", "weight_decay", "eps")}}
            part = _adamw([(i.name, i.param) for i in infos], **kw)
        else:
            part = _build_part(self.model, opt, infos, group.get("lr", self.rate(opt)), self.options)
        self.parts[opt] = part
        return part


def _is_routes(name: str | Mapping[str, str]) -> bool:
    """Whether ``name`` is routes (a mapping, a registered routed name or the string form), not one name."""
    if isinstance(name, Mapping):
        return True
    return isinstance(name, str) and (name in _ROUTES or "+" in name or _top_level_equals(name) >= 0)


def _routes_of(name: str | Mapping[str, str], lr: Any) -> tuple[dict[str, str], Any]:
    """``name``'s routes and the multiplier of their default rates (``None`` for one registered
    name: then ``lr`` is its own rate)."""
    if isinstance(name, str) and name in _ROUTES:
        return _ROUTES[name], (1.0 if lr is None else lr)
    if isinstance(name, Mapping):
        routes = dict(name)
        _check_routes(routes)
        return routes, (1.0 if lr is None or isinstance(lr, Mapping) else lr)
    if _is_routes(name):
        return parse_routes(name), (1.0 if lr is None else lr)
    return {"*": _spec(name).name}, None


def _route_rates(lr: Any, routes: Mapping[str, str]) -> dict[str, float]:
    """The per-optimizer rates of an ``lr`` mapping (checked against the routes' optimizers)."""
    rates = dict(lr) if isinstance(lr, Mapping) else {}
    unknown = set(rates) - set(routes.values())
    if unknown:
        raise ValueError(f"lr names {sorted(unknown)}, which no route uses; routes use {sorted(set(routes.values()))}")
    return rates


def _route_matrices(
    model: nn.Module, routes: Mapping[str, str], head, inputs: str
) -> tuple[dict[str, list[ParamInfo]], list[tuple[str, nn.Parameter]]]:
    """The model's matrices by the optimizer their first matching route names, the non-matrix
    parameters by :func:`_non_matrix_route`, and the parameters for AdamW (those and the matrices
    routed to ``"adamw"``)."""
    split = classify_parameters(model, head, inputs=inputs)
    routed: dict[str, list[ParamInfo]] = {}
    for info in split.matrix:
        opt = next((o for pattern, o in routes.items() if any(fnmatchcase(n, pattern) for n in info.aliases)), None)
        if opt is None:
            raise ValueError(f"no route matches matrix parameter {info.name!r}; add a catch-all route, e.g. {{..., '*': 'muon'}}")
        routed.setdefault(opt, []).append(info)
    rest = []
    for info in split.other:
        opt = _non_matrix_route(info, routes)
        (rest if opt == "adamw" else routed.setdefault(opt, [])).append(info)
    _warn_unrouted(rest, matrices=sum(len(v) for o, v in routed.items() if o != "adamw"), wanted=set(routes.values()) - {"adamw"})
    other = [(i.name, i.param) for i in rest] + [(i.name, i.param) for i in routed.pop("adamw", [])]
    return routed, other


def _non_matrix_route(info: ParamInfo, routes: Mapping[str, str]) -> str:
    """Where a non-matrix parameter (embedding, head, 1-D, ...) goes: the first route matching it
    whose optimizer takes every role (``Registration.roles``: ``modular``, ``scion``) or is
    ``"adamw"``, else AdamW. Routes to matrix-only optimizers are passed over, so that
    ``{"*.mlp.*": "neon-fstar", "*": "modular"}`` gives the MLP's biases to ``modular``."""
    for pattern, opt in routes.items():
        if (opt == "adamw" or OPTIMIZERS[opt].roles) and any(fnmatchcase(n, pattern) for n in info.aliases):
            return opt
    return "adamw"


def _effective_ndim(p: torch.Tensor) -> int:
    return sum(1 for d in p.shape if d > 1)


def _warn_unrouted(others: list[ParamInfo], matrices: int, wanted: set[str]) -> None:
    """Never route a weight silently: warn, naming them, about the ≥ 2-D parameters that go to
    AdamW under no rule the README states (weights of ≥ 3 effective dimensions, such as MoE expert
    banks and ConvTranspose kernels, and parametrized weights such as ``weight_norm``'s), and
    always when the matrix optimizers got nothing."""
    unknown = [
        i.name for i in others
        if i.kind == "embedding-like" and (_effective_ndim(i.param) >= 3 or ".parametrizations." in f".{i.name}")
    ]  # fmt: skip
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        warnings.warn(
            f"build_optimizer: {len(unknown)} weight(s) of no layer type the split knows go to AdamW: {shown}; "
            "register their module with steepest.optim.split.register_matrix_module, or route them explicitly",
            stacklevel=4,
        )
    big = [i.name for i in others if _effective_ndim(i.param) >= 2]
    if wanted and not matrices and big:
        warnings.warn(
            f"build_optimizer: no parameter is a matrix for {', '.join(sorted(wanted))}: every parameter goes to AdamW "
            f"(the ≥ 2-D ones: {', '.join(big[:8])}{' ...' if len(big) > 8 else ''})",
            stacklevel=4,
        )


def _rate(opt: str, lr: Any, rates: Mapping[str, float], multiplier: Any) -> float:
    """The lr of optimizer ``opt``'s part: its rate in an ``lr`` mapping, else ``lr`` itself for
    one name, else the multiplier times its default."""
    if opt in rates:
        return rates[opt]
    if multiplier is None:
        return OPTIMIZERS[opt].default_lr if lr is None else lr
    return multiplier * OPTIMIZERS[opt].default_lr


def _build_part(model: nn.Module, opt: str, infos: list[ParamInfo], rate: float, options: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Optimizer ``opt`` on the matrices ``infos`` (``options`` go to matrix optimizers only)."""
    spec = OPTIMIZERS[opt]
    if not spec.matrix:
        return spec.build([(i.name, i.param) for i in infos], lr=rate)
    kw = {"model": model, **options} if spec.needs_model else options
    return spec.build(role_groups(infos) if spec.roles else _groups(infos, spec), lr=rate, **kw)


def _groups(infos: list[ParamInfo], spec: Registration) -> list:
    """The named matrices for ``spec``'s factory: a flat list, or one param group per layout, with
    ``transposed=True`` for weights stored ``(in, out)`` and ``matrix_blocks=k`` for weights that
    stack ``k`` matrices (experts, conv groups). Peers get the flat list."""
    layouts: dict[tuple[bool, int], list] = {}
    for i in infos:
        layouts.setdefault((i.transposed, i.blocks), []).append((i.name, i.param))
    if spec.peer or list(layouts) == [(False, 1)]:
        return [(i.name, i.param) for i in infos]
    return [{"params": named, **layout_options(transposed, blocks)} for (transposed, blocks), named in layouts.items()]


def layout_options(transposed: bool, blocks: int) -> dict:
    """The param-group options of a matrix layout (none for a plain ``(out, in)`` weight)."""
    return {**({"transposed": True} if transposed else {}), **({"matrix_blocks": blocks} if blocks > 1 else {})}

"""The optimizer registry: every name :func:`~steepest.optim.build.build_optimizer` and the
harness accept, each declared next to its class.

An optimizer class registers its names with a decorator, one :class:`Registration` per name::

    @register(
        Registration("neon-nuclear", "Neon, nuclear norm: ...", 1.0, family="nuclear", options={"mode": "nuclear"}),
        Registration("neon-fstar", "Neon, F* norm: ...", 1.0, family="fstar", options={"mode": "fstar"}),
    )
    class Neon(MatrixOptimizer): ...

Everything that lists optimizers reads this registry: ``build_optimizer``, ``steepest-bench list``,
the benchmark tasks' learning rates (keyed by :attr:`Registration.family`), the figures' colours
and the test suite's contracts. Names are listed in the order they were registered. The peers
(other projects' optimizers, for side-by-side comparison) are registered by the harness,
:mod:`steepest.bench.peers`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import torch

__all__ = ["Registration", "OPTIMIZERS", "register", "add", "optimizer_names", "register_variant", "split_names", "top_level", "registration"]

T = TypeVar("T")


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Registration:
    """One registered optimizer name: what the harness shows and how to build it.

    ``factory(params, lr=..., **kwargs)`` builds it from named parameters; with :func:`register`
    it is the decorated class (or function). ``options`` are fixed constructor arguments that
    distinguish this name from others of the same class (``mode="nuclear"``); arguments given at
    build time override them.
    """

    name: str
    description: str  # one line, shown by ``steepest-bench list``
    default_lr: float  # build_optimizer's lr without lr=, and the tasks' fallback
    family: str = ""  # the lr family the tasks key their rates by ("spectral", ...); default: the name
    color: str | None = None  # its fixed colour in every figure; None: a spare colour by registry order
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    factory: Callable[..., torch.optim.Optimizer] | None = field(default=None, repr=False)
    matrix: bool = True  # False: every parameter goes to this optimizer (no AdamW split)
    roles: bool = False  # True: it also takes the non-matrix parameters, in param groups by role (role=...), instead of AdamW
    needs_model: bool = False  # the factory takes model=... (Newton-Muon installs input hooks)
    peer: bool = False  # another project's optimizer, registered for side-by-side comparison
    extra: str | None = None  # the optional dependency group that installs it ("peers"), if any
    install_hint: str | None = None  # why it is unavailable and how to fix that (default: from extra)
    available: Callable[[], bool] = field(default=_always, repr=False)
    variant_of: str | None = None  # set by register_variant: the name whose options this one overrides

    def __post_init__(self) -> None:
        if not self.family:
            object.__setattr__(self, "family", self.name)
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        if self.install_hint is None and self.extra:
            object.__setattr__(self, "install_hint", f'not installed: pip install -e ".[{self.extra}]"')

    def build(self, params, **kwargs) -> torch.optim.Optimizer:
        """``factory(params, **options, **kwargs)`` (``kwargs`` override ``options``)."""
        if self.factory is None:
            raise TypeError(f"optimizer {self.name!r} has no factory: register it with @register(...) on its class")
        return self.factory(params, **{**self.options, **kwargs})


OPTIMIZERS: dict[str, Registration] = {}


def add(registration: Registration, *, replace: bool = False) -> Registration:
    """Register ``registration`` (it must have a factory); a name registered twice is an error
    unless ``replace``. Returns it."""
    if registration.factory is None:
        raise TypeError(f"optimizer {registration.name!r} has no factory")
    if not replace and registration.name in OPTIMIZERS:
        raise ValueError(f"optimizer name {registration.name!r} is already registered ({OPTIMIZERS[registration.name].description})")
    OPTIMIZERS[registration.name] = registration
    return registration


def register(*registrations: Registration) -> Callable[[T], T]:
    """Class (or function) decorator: register each of ``registrations`` with the decorated
    object as its factory."""

    def decorate(factory: T) -> T:
        for r in registrations:
            add(dataclasses.replace(r, factory=factory))
        return factory

    return decorate


def optimizer_names(include_unavailable: bool = False) -> list[str]:
    """Names accepted by :func:`~steepest.optim.build.build_optimizer`, in registration order
    (optional peers only when installed; not the variants registered on use, which any
    ``"NAME(KEY=VALUE,...)"`` spelling adds)."""
    return [n for n, s in OPTIMIZERS.items() if (include_unavailable or s.available()) and not s.variant_of]


_VARIANT = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*\((.*)\)\s*$", re.S)


def _option_value(text: str, where: str) -> Any:
    """A Python literal (``0.1``, ``True``, ``'fstar'``); ``true``/``false`` and bare words too."""
    low = text.strip()
    if low.lower() in ("true", "false"):
        return low.lower() == "true"
    try:
        return ast.literal_eval(low)
    except (ValueError, SyntaxError):
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", low):
            return low
        raise ValueError(f"bad option value {text!r} in {where}: write a number, True/False or a word") from None


def _check_options(base: Registration, options: Mapping[str, Any], where: str) -> None:
    """Options the base's factory does not take are an error naming the ones it does."""
    try:
        sig = inspect.signature(base.factory)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    taken = [n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("params", "lr", "model")]
    for key in options:
        if key not in taken:
            raise ValueError(f"{where}: {base.name} has no option {key!r}; its options: {', '.join(taken)}")


def register_variant(text: str) -> str:
    """Register ``"NAME(KEY=VALUE,...)"``, optimizer ``NAME`` with those constructor options, under
    that spelling (spaces dropped), so that ``build_optimizer`` and the harness run it like any name:
    ``"muon(weight_decay=0.1,cautious_weight_decay=True)"``. It keeps ``NAME``'s default lr and lr
    family, and gets a figure colour of its own. Returns the registered name."""
    m = _VARIANT.match(text)
    if m is None:
        raise ValueError(f"bad optimizer variant {text!r}: write NAME(KEY=VALUE,...), e.g. 'muon(weight_decay=0.1)'")
    base_name, body = m.group(1), m.group(2)
    base = OPTIMIZERS.get(base_name)
    if base is None or base.factory is None:
        raise ValueError(f"bad optimizer variant {text!r}: unknown optimizer {base_name!r}; valid names: {', '.join(optimizer_names())}")
    options: dict[str, Any] = {}
    for part in (p for p in split_names(body) if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"bad option {part.strip()!r} in {text!r}: write KEY=VALUE")
        options[key.strip()] = _option_value(value, repr(text))
    if not options:
        raise ValueError(f"bad optimizer variant {text!r}: name at least one option, e.g. 'muon(weight_decay=0.1)'")
    _check_options(base, options, repr(text))
    name = text.strip()
    desc = f"{base.name} with " + ", ".join(f"{k}={v!r}" for k, v in options.items())
    add(dataclasses.replace(base, name=name, description=desc, color=None, options={**base.options, **options}, variant_of=base.name), replace=True)
    return name


def top_level(text: str, char: str) -> list[int]:
    """The indices of ``char`` in ``text`` outside parentheses (a variant's options are inside)."""
    out, depth = [], 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == char and depth == 0:
            out.append(i)
    return out


def split_names(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses: ``"muon,muon(weight_decay=0.1,cautious_weight_decay=True)"``
    gives two names."""
    cuts = [-1, *top_level(text, ","), len(text)]
    return [text[a + 1 : b] for a, b in zip(cuts, cuts[1:])]


def registration(name: str) -> Registration:
    """The registration of ``name``, registering a variant ``"NAME(KEY=VALUE,...)"`` on first use
    (``KeyError`` for an unknown plain name)."""
    if name not in OPTIMIZERS and "(" in name:
        name = register_variant(name)
    return OPTIMIZERS[name]

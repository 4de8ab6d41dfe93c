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

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import torch

__all__ = ["Registration", "OPTIMIZERS", "register", "add", "optimizer_names"]

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
    needs_model: bool = False  # the factory takes model=... (Newton-Muon installs input hooks)
    peer: bool = False  # another project's optimizer, registered for side-by-side comparison
    extra: str | None = None  # the optional dependency group that installs it ("peers"), if any
    install_hint: str | None = None  # why it is unavailable and how to fix that (default: from extra)
    available: Callable[[], bool] = field(default=_always, repr=False)

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
    (optional peers only when installed)."""
    return [n for n, s in OPTIMIZERS.items() if include_unavailable or s.available()]

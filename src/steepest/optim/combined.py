"""One optimizer object over several: a matrix optimizer and AdamW, with one ``state_dict`` and one
LR scheduler."""

from __future__ import annotations

import warnings
from collections import ChainMap
from collections.abc import Callable, Sequence

import torch
from torch.optim import Optimizer

__all__ = ["CombinedOptimizer"]


class CombinedOptimizer(Optimizer):
    """Steps each child optimizer in turn; ``param_groups`` are the children's own group dicts, so
    an LR scheduler on this object drives every child (each group keeps its own base lr).

    ``state_dict()`` is ``{"optimizers": [child.state_dict(), ...]}`` and resumes exactly.
    """

    def __init__(self, optimizers: Sequence[Optimizer]) -> None:
        optimizers = list(optimizers)
        if not optimizers:
            raise ValueError("CombinedOptimizer needs at least one optimizer")
        for o in optimizers:
            if not isinstance(o, Optimizer):
                raise TypeError(f"CombinedOptimizer takes torch.optim.Optimizer instances, got {type(o).__name__}")
        seen: set[int] = set()
        for o in optimizers:
            for g in o.param_groups:
                for p in g["params"]:
                    if id(p) in seen:
                        raise ValueError("a parameter appears in two of CombinedOptimizer's optimizers; give each parameter to one")
                    seen.add(id(p))
        self.optimizers = optimizers
        self._adopting = True
        super().__init__([g for o in optimizers for g in o.param_groups], {})
        self._adopting = False
        self.state = ChainMap(*[o.state for o in optimizers])
        self.defaults = _scheduler_defaults(optimizers)

    router = None  # set by build_optimizer: routes parameters added later by its split and routes

    def add_param_group(self, param_group: dict) -> None:
        """Add parameters (e.g. unfrozen layers): with an optimizer from :func:`steepest.build_optimizer`
        they are routed by the same split and routes (matrices to the matrix optimizer, the rest to
        AdamW; a part that does not exist yet is built), and their groups appear in
        :attr:`param_groups`, so schedulers, ``GradScaler.unscale_`` and clipping see them."""
        if getattr(self, "_adopting", False):
            # the children validated their groups (named or not, each their own way): adopt the same dicts
            self.param_groups.append(param_group)
            return
        if self.router is None:
            raise TypeError("this CombinedOptimizer was not built by steepest.build_optimizer: add the group to one of its .optimizers, then rebuild it")
        for name, part, group, infos in self.router(param_group):
            if part is None:
                part = self.router.new_part(name, infos, group)
                self.optimizers.append(part)
                self.state.maps.append(part.state)
                self.param_groups.extend(part.param_groups)
                continue
            part.add_param_group(group)
            self.param_groups.append(part.param_groups[-1])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.router is not None:
            self._warn_unheld_gradients()
        for o in self.optimizers:
            o.step()
        return loss

    def _warn_unheld_gradients(self) -> None:
        """Warn once per parameter of the model that has a gradient but no optimizer (set trainable
        after ``build_optimizer`` ran, without ``add_param_group``): it would silently never train."""
        held = {id(p) for g in self.param_groups for p in g["params"]}
        warned = self.__dict__.setdefault("_warned_unheld", set())
        unheld = [n for n, p in self.router.model.named_parameters() if p.grad is not None and id(p) not in held and n not in warned]
        if unheld:
            warned.update(unheld)
            shown = ", ".join(unheld[:8]) + (f" and {len(unheld) - 8} more" if len(unheld) > 8 else "")
            warnings.warn(
                f"CombinedOptimizer.step: {len(unheld)} parameter(s) have a gradient but no optimizer and are not updated: {shown}; "
                'add them with opt.add_param_group({"params": [...]}) (they were frozen when build_optimizer ran)',
                stacklevel=3,
            )

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        children = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
        if children is None or len(children) != len(self.optimizers):
            found = "no 'optimizers' entry" if children is None else f"{len(children)} optimizers"
            raise ValueError(f"state_dict does not match this CombinedOptimizer: it has {found}, this has {len(self.optimizers)}")
        for o, sd in zip(self.optimizers, children):
            o.load_state_dict(sd)
        # torch's load_state_dict gives each child new group dicts: adopt them, or LR schedulers and
        # lr changes made through this object would no longer reach the children
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    def __repr__(self) -> str:
        inner = ",\n".join("  " + repr(o).replace("\n", "\n  ") for o in self.optimizers)
        return f"CombinedOptimizer(\n{inner}\n)"


def _scheduler_defaults(optimizers: Sequence[Optimizer]) -> dict:
    """The children's defaults merged, the first child's value winning (what schedulers read:
    ``defaults["lr"]``, ``"momentum"`` or ``"betas"`` for ``OneCycleLR``/``CyclicLR``'s
    ``cycle_momentum``). A key that torch's schedulers treat as one choice for every group is kept
    only when every child has it: with a matrix optimizer (``momentum``) beside AdamW (``betas``),
    ``betas`` is dropped, so a cycled momentum drives the matrix optimizer's μ and AdamW's groups
    keep their β₁ (the ``momentum`` key written into them is unused by AdamW)."""
    merged: dict = {}
    for o in optimizers:
        for key, value in o.defaults.items():
            merged.setdefault(key, value)
    if "betas" in merged and not all("betas" in o.defaults for o in optimizers):
        del merged["betas"]
    return merged

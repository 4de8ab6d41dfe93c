"""The one way the library checks its options: each check raises a one-line ``ValueError`` that
names the option, the value it got and what it accepts."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

__all__ = ["check_choice", "check_bool", "check_int", "check_number"]


def check_choice(value: object, name: str, choices: Iterable[str]) -> None:
    """``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; accepted values: {', '.join(map(repr, choices))}")


def check_bool(value: object, name: str) -> None:
    """``value`` is ``True`` or ``False`` (not a truthy stand-in such as 1 or ``"yes"``)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_int(value: object, name: str, *, minimum: int = 1, none: str | None = None) -> None:
    """``value`` is an integer ``≥ minimum`` (``None`` too when ``none`` says what it means)."""
    if value is None and none is not None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        also = f" or None ({none})" if none is not None else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{also}, got {value!r}")


def check_number(name: str, value: object, *, low: float = 0.0, high: float | None = None, high_open: bool = False, what: str = "") -> None:
    """``low ≤ value (≤ or <) high``, a finite real number; a 1-element tensor is accepted for
    ``lr`` only (its value is read once, here). ``what`` explains the option in the message."""
    if name == "lr" and isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"lr must be a number or a 1-element tensor, got a tensor of shape {tuple(value.shape)}")
        value = float(value.detach().cpu())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number{what}, got {value!r}")
    if value < low or (high is not None and (value >= high if high_open else value > high)):
        bound = f"[{low}, {high}{')' if high_open else ']'}" if high is not None else f"[{low}, inf)"
        raise ValueError(f"{name} must be in {bound}{what}, got {value!r}")

"""The suite's optimizer lists, derived from the registry (``steepest.optim.registry``).

A test that runs "every optimizer" takes every registered name with the properties it needs, so
that a new registration is in every contract, resume and parity test without anyone adding it to
a list; a test leaves a name out by a property of its registration, not by the name. Importing
this module registers the harness's peers too (``steepest.bench.peers``: ``torch-muon``, ...).
"""

from __future__ import annotations

import steepest.bench.peers  # noqa: F401  (registers the peers)
from steepest.optim.registry import OPTIMIZERS, Registration

__all__ = ["registered", "registration"]


def registration(name: str) -> Registration:
    return OPTIMIZERS[name]


def registered(
    *,
    matrix: bool | None = None,
    peer: bool | None = None,
    needs_model: bool | None = None,
    extras: bool = False,
    one_per_kind: bool = False,
    available: bool = True,
) -> list[str]:
    """Registered names in registration order. ``matrix``, ``peer``, ``needs_model``: only those
    whose registration has that value (``None``: either); ``extras``: also those that an optional
    dependency group installs (``Registration.extra``: the third-party peers, slow to build and
    not ours to test exactly); ``one_per_kind``: the first name of each class and ``mode`` only
    (the scale, sigma and error-feedback variants run the same code otherwise); ``available``:
    only those that can be built here. Variants registered while the suite runs
    (``register_variant``) are never listed."""
    names, kinds = [], set()
    for name, r in OPTIMIZERS.items():
        if (available and not r.available()) or (r.extra and not extras) or r.variant_of:
            continue
        if any(want is not None and getattr(r, attr) != want for attr, want in (("matrix", matrix), ("peer", peer), ("needs_model", needs_model))):
            continue
        kind = (r.factory, r.options.get("mode"), r.options.get("cautious_weight_decay"))
        if one_per_kind and kind in kinds:
            continue
        kinds.add(kind)
        names.append(name)
    return names

"""What every rank must agree on before a collective: the optimizer's options and its parameters.

A rank built with other options (another lr, another ``ns_steps``, another model) would issue
different collectives from the others and hang until the process group's timeout. On the first
step each rank hashes its optimizer's description and one all-gather compares the
hashes; on a mismatch every rank raises :class:`OptionsMismatchError` naming the first difference.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
from torch import Tensor

from .compat import all_gather_single

__all__ = ["OptionsMismatchError", "describe", "check_same_options"]


class OptionsMismatchError(RuntimeError):
    """The ranks built the optimizer with different options or parameters."""


def _canonical(value: object) -> object:
    if isinstance(value, Tensor):
        return float(value) if value.numel() == 1 else ("tensor", tuple(value.shape), str(value.dtype))
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)


def describe(optimizer) -> list[dict]:
    """Per param group: its options and its parameters' shapes and dtypes (global shapes for
    DTensors), in a form that ranks can compare."""
    groups = []
    for group in optimizer.param_groups:
        entry = {k: _canonical(v) for k, v in sorted(group.items()) if k != "params"}
        entry["params"] = [(tuple(p.shape), str(p.dtype)) for p in group["params"]]
        groups.append(entry)
    return [{"optimizer": type(optimizer).__qualname__}, *groups]


def _digest(description: list[dict]) -> int:
    return int.from_bytes(hashlib.sha256(repr(description).encode()).digest()[:8], "little", signed=True)


def check_same_options(optimizer, group, device: torch.device) -> None:
    """Raise :class:`OptionsMismatchError` on every rank unless all ranks describe ``optimizer``
    identically (a collective over ``group``)."""
    mine = describe(optimizer)
    world = dist.get_world_size(group)
    digest = torch.tensor([_digest(mine)], dtype=torch.int64, device=device)
    digests = torch.empty(world, dtype=torch.int64, device=device)
    all_gather_single(digests, digest, group=group)
    digests = digests.tolist()
    if len(set(digests)) == 1:
        return
    descriptions: list = [None] * world
    dist.all_gather_object(descriptions, mine, group=group)
    other = next(r for r in range(world) if digests[r] != digests[0])
    raise OptionsMismatchError(
        f"{type(optimizer).__name__} was built differently on rank 0 and rank {other}: "
        f"{_first_difference(descriptions[0], descriptions[other])}. Every rank must build the optimizer "
        "with the same options over the same parameters (same model, same order)."
    )


def _first_difference(a: list[dict], b: list[dict]) -> str:
    if len(a) != len(b):
        return f"{len(a) - 1} param groups against {len(b) - 1}"
    for i, (ga, gb) in enumerate(zip(a, b)):
        for key in sorted(set(ga) | set(gb)):
            if ga.get(key) != gb.get(key):
                where = "the optimizer class" if i == 0 else f"param group {i - 1}, {key!r}"
                va, vb = ga.get(key), gb.get(key)
                if isinstance(va, list) and isinstance(vb, list):
                    i = next((i for i, (x, y) in enumerate(zip(va, vb)) if x != y), min(len(va), len(vb)))
                    at = lambda v: repr(v[i]) if i < len(v) else "nothing"  # noqa: E731
                    return f"{where}: {len(va)} entries against {len(vb)}, the first difference at #{i}: {at(va)} against {at(vb)}"
                return f"{where}: {va!r} against {vb!r}"
    return "their descriptions differ"

"""Which rank computes which matrices: same-shape batches split by FLOPs.

A batch of ``k`` same-shape matrices is padded to ``s·W`` slots (``s = ⌈k/W⌉``, ``W`` ranks), and
rank ``r`` owns the slots ``r·s … r·s + s − 1`` (dion's "megabatches", modded-nanogpt's banks): so
every rank sends the same number of bytes and one all-gather (or ``all_to_all``)
moves the batch. Rank ``r`` computes ``counts[r] ∈ {s − 1, s}`` real matrices (fewer only when
``k < W``), a contiguous slice ``starts[r] … starts[r] + counts[r] − 1`` of the batch; the padding
slots are never computed.

Which ranks get the ``s·W − k`` short slots is chosen to balance FLOPs across the batches of a
param group: the batches are visited from the most to the least expensive matrix (longest
processing time first), and each batch's short slots go to the ranks with the most work so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Assignment", "assign", "direction_flops"]


@dataclass(frozen=True)
class Assignment:
    """One batch of ``k`` matrices over ``world`` ranks, ``slots`` slots per rank."""

    k: int
    world: int
    slots: int
    counts: tuple[int, ...]
    starts: tuple[int, ...]

    def owned(self, rank: int) -> range:
        """The batch indices that ``rank`` computes."""
        return range(self.starts[rank], self.starts[rank] + self.counts[rank])

    @property
    def in_order(self) -> bool:
        """Whether the real matrices fill the first ``k`` slots (no padding before the last one):
        then the gathered slots are the batch, in order, without a copy."""
        short = False
        for c in self.counts:
            if short and c:
                return False
            short = short or c < self.slots
        return True

    def slot_index(self) -> list[int]:
        """Each matrix's position among the ``world·slots`` gathered slots."""
        ranks, slots = self.slot_of()
        return [r * self.slots + j for r, j in zip(ranks, slots)]

    def in_matrix_order(self, gathered):
        """The ``k`` real matrices of a ``(world·slots, …)`` gathered tensor, in batch order."""
        if self.in_order:
            return gathered[: self.k]
        return gathered[self.slot_index()]

    def slot_of(self) -> tuple[list[int], list[int]]:
        """For each matrix of the batch (in order): its owner rank and its slot on that rank."""
        ranks, slots = [], []
        for r in range(self.world):
            ranks += [r] * self.counts[r]
            slots += list(range(self.counts[r]))
        return ranks, slots


def assign(batches: list[tuple[int, float]], world: int) -> list[Assignment]:
    """Split batches given as ``(k, FLOPs per matrix)`` over ``world`` ranks (see the module doc).

    Deterministic in its arguments, so every rank computes the same plan without communicating.
    """
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    load = [0.0] * world
    plans: list[Assignment | None] = [None] * len(batches)
    for i in sorted(range(len(batches)), key=lambda i: (-batches[i][1], i)):
        k, cost = batches[i]
        slots = max(1, math.ceil(k / world))
        short = slots * world - k
        # the `short` most loaded ranks (ties: the higher rank) compute one matrix fewer
        busiest = sorted(range(world), key=lambda r: (-load[r], -r))[:short]
        counts = [slots - (r in busiest) for r in range(world)]
        starts = [sum(counts[:r]) for r in range(world)]
        for r in range(world):
            load[r] += counts[r] * cost
        plans[i] = Assignment(k, world, slots, tuple(counts), tuple(starts))
    return plans  # type: ignore[return-value]


def direction_flops(optimizer, group: dict, shape: tuple[int, int]) -> float:
    """A FLOP estimate of one matrix's direction, used only to balance the split: each optimizer
    states its own (``MatrixOptimizer.direction_flops``, overridden by Muon, Neon, Shampoo, sign
    descent and Dion), so that the partitioner needs no knowledge of any optimizer's internals."""
    return float(optimizer.direction_flops(group, shape))

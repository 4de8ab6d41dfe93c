"""Claim 6 (lecture seed): Shampoo without accumulation is ``U_r V_rᵀ``, i.e. Muon's direction.

    python benchmarks/shampoo_identity.py

For each test family (float64), ``(GGᵀ)^{-1/4} G (GᵀG)^{-1/4}`` with pseudo-inverse roots (ε = 0)
against ``U_r V_rᵀ`` from a float64 SVD; and, as a contrast, the same direction when the
statistics accumulate a second, different gradient (``L = G₁G₁ᵀ + GGᵀ``), which is not ``U_r V_rᵀ``.
"""

from __future__ import annotations

import torch

from steepest.directions import shampoo_direction
from steepest.directions.families import FAMILIES, matrix_family
from steepest.directions.reference import reference_msgn, relative_error


def main() -> None:
    print("| family | shape | rank | ‖D − U_rV_rᵀ‖/‖U_rV_rᵀ‖, no accumulation | same, two gradients accumulated |")
    print("|---|---|---|---|---|")
    for family in FAMILIES:
        if family == "zero":
            continue
        G = matrix_family(family, seed=0)
        G1 = matrix_family(family, seed=1)
        ref = reference_msgn(G)
        once = shampoo_direction(G, G @ G.mT, G.mT @ G, eps=0.0)
        twice = shampoo_direction(G, G1 @ G1.mT + G @ G.mT, G1.mT @ G1 + G.mT @ G, eps=0.0)
        rank = int(torch.linalg.matrix_rank(G))
        print(f"| {family} | {tuple(G.shape)} | {rank} | {relative_error(once, ref):.1e} | {relative_error(twice, ref):.2f} |")


if __name__ == "__main__":
    main()

"""steepest: matrix-aware optimizers as steepest descent under per-layer norms.

Each optimizer's update direction is a pure function in :mod:`steepest.directions`;
:mod:`steepest.optim` turns them into ``torch.optim.Optimizer`` classes, and
:func:`build_optimizer` splits a model between a matrix optimizer and AdamW
(or, for :class:`Modular`, gives every parameter the norm of its role).
"""

from .optim import (
    CombinedOptimizer,
    Dion,
    Modular,
    Muon,
    Neon,
    NewtonMuon,
    NorMuon,
    NonFiniteGradientError,
    Shampoo,
    SignDescent,
    build_optimizer,
    modular_init,
    optimizer_names,
    split_parameters,
)

__version__ = "0.1.0"

__all__ = [
    "Dion",
    "Modular",
    "Muon",
    "Neon",
    "NewtonMuon",
    "NorMuon",
    "Shampoo",
    "SignDescent",
    "CombinedOptimizer",
    "NonFiniteGradientError",
    "build_optimizer",
    "modular_init",
    "optimizer_names",
    "split_parameters",
]

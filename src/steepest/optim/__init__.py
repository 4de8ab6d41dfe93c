"""Optimizers: each :mod:`steepest.directions` function as a ``torch.optim.Optimizer``."""

from .base import MatrixOptimizer, NonFiniteGradientError
from .build import OPTIMIZERS, build_optimizer, optimizer_names, split_parameters
from .combined import CombinedOptimizer
from .dion import Dion
from .muon import Muon
from .neon import Neon
from .normuon import NorMuon
from .newton_muon import NewtonMuon
from .shampoo import Shampoo
from .sign import SignDescent

__all__ = [
    "Dion",
    "Muon",
    "Neon",
    "NorMuon",
    "NewtonMuon",
    "Shampoo",
    "SignDescent",
    "CombinedOptimizer",
    "MatrixOptimizer",
    "NonFiniteGradientError",
    "build_optimizer",
    "optimizer_names",
    "split_parameters",
    "OPTIMIZERS",
]

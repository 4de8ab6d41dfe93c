"""Optimizers: each :mod:`steepest.directions` function as a ``torch.optim.Optimizer``."""

from .base import MatrixOptimizer, NonFiniteGradientError
from .build import OPTIMIZERS, build_optimizer, optimizer_names, split_parameters
from .combined import CombinedOptimizer
from .dion import Dion
from .modular import Modular
from .modular_init import modular_init
from .muon import Muon
from .neon import Neon
from .normuon import NorMuon
from .newton_muon import NewtonMuon
from .shampoo import Shampoo
from .sign import SignDescent

__all__ = [
    "Dion",
    "Modular",
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
    "modular_init",
    "optimizer_names",
    "split_parameters",
    "OPTIMIZERS",
]

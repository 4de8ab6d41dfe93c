"""steepest: matrix-aware optimizers as steepest descent under per-layer norms.

Each optimizer's update direction is a pure function in :mod:`steepest.directions`;
:mod:`steepest.optim` turns them into ``torch.optim.Optimizer`` classes.
"""

__version__ = "0.1.0"

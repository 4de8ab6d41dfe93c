"""Benchmark harness: tasks, training loop with exact resume, sweeps, figures and reports.

The command line is ``steepest-bench`` (:func:`steepest.bench.cli.main`); ``steepest-bench run``
alone trains the default comparison on scikit-learn's digits and writes its figures. Importing
this package registers the peers (:mod:`.peers`), other projects' optimizers.
"""

from . import peers as _peers  # noqa: F401  (registers torch-muon, heavyball-*, ...)

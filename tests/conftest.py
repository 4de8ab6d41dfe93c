"""Suite-wide: one intra-op thread per test process.

CI runs on a busy 2-core machine. There, multithreaded BLAS/LAPACK calls that spin-wait for
their threads (MKL's ``eigh`` measured 100–400× slower under load than with one thread) dominated
the suite's time; one thread keeps every test's cost proportional to its FLOPs. Results do not
depend on this (tests never rely on a thread count's rounding); benchmarks set their own threads.

Also the ``slow`` marker on the longer tests, listed here in one place (``pytest -m "not slow"``
is the fast subset, see README). A test is listed when it took about 5 s or more in a full run on a busy 2-core machine (``pytest --durations=80``, 2026-11-30: load
average about 10, the whole suite 22 min): end-to-end training, subprocesses and spawned gloo
ranks, ``torch.compile``, the benchmark scripts. Each entry is a node-id prefix (a whole module
with ``::``, a test with every parameter, or one parameter set).

Every optimizer list of the suite comes from the registry: ``registered(matrix=True, peer=False,
...)`` (:mod:`tests.registered`, imported here so that the harness's peers, ``torch-muon`` and
the others, are registered in every test).
"""

from __future__ import annotations

import pytest
import torch

from .registered import registered  # noqa: F401  (registers the peers; see tests/registered.py)

torch.set_num_threads(1)

SLOW = (
    # end-to-end training and benchmark scripts
    "tests/optim/test_digits.py::",
    "tests/benchmarks/test_scripts.py::",
    "tests/benchmarks/test_gpu_check.py::test_smoke",
    "tests/bench/test_finetune.py::",
    "tests/bench/test_train.py::test_torchrun_",
    "tests/bench/test_train.py::test_resume_after_sigkill_matches_uninterrupted_run",
    "tests/bench/test_cli.py::test_python_dash_m_entry_point",
    "tests/bench/test_cli.py::test_sweep_then_run_with_the_best_lr",
    "tests/optim/test_model_zoo.py::test_trainer_save_resume",
    # spawned gloo ranks
    "tests/distributed/test_neon_width.py::",
    "tests/distributed/test_checkpoint.py::test_resume_one_to_two",
    "tests/distributed/test_failures.py::test_none_gradient_on_one_rank_does_not_deadlock",
    "tests/distributed/test_dion.py::test_ddp_matches_single_process",
    "tests/distributed/test_units.py::test_world_size_one_uses_the_local_executor",
    # torch.compile, Triton's interpreter, the demo subprocess
    "tests/optim/test_compile.py::test_compiled_equals_eager",
    "tests/directions/test_kernels.py::test_triton_kernel_matches_torch_in_interpreter",
    "tests/directions/test_demo.py::test_demo_prints_error_table",
    # the largest float64 comparisons (their smaller families stay in the fast subset)
    "tests/optim/test_torch_parity.py::test_matches_torch_optim_muon",
    "tests/directions/test_optimality.py::test_fstar_mean_of_norms[conv]",
    "tests/directions/test_optimality.py::test_fstar_mean_of_norms[rank_deficient]",
    "tests/directions/test_optimality.py::test_fstar_seed_is_half_the_squared_mean_minimiser[conv]",
    "tests/directions/test_optimality.py::test_spectral[gaussian]",
    "tests/directions/test_optimality.py::test_spectral[conv]",
    "tests/directions/test_msgn.py::test_batch_of_mixed_scales",
    "tests/optim/test_dion.py::test_bf16_weights_match_float64_recurrence",
)


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)

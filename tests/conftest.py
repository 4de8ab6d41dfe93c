"""Suite-wide: one intra-op thread per test process.

CI runs on a busy 2-core machine. There, multithreaded BLAS/LAPACK calls that spin-wait for
their threads (MKL's ``eigh`` measured 100–400× slower under load than with one thread) dominated
the suite's time; one thread keeps every test's cost proportional to its FLOPs. Results do not
depend on this (tests never rely on a thread count's rounding); benchmarks set their own threads."""

import torch

torch.set_num_threads(1)

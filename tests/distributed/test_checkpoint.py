"""DCP checkpoints resume under another world size and setting, identically to an uninterrupted
run: 3 steps, save, load under another world size, 3 more steps; compared with 6 straight steps
of the same optimizer (``build_optimizer``: the matrix optimizer plus AdamW).

* 1 → 2: saved by one process (a process group of size 1), resumed by 2 ranks under DDP
  (replicated) and FSDP2 (row-sharded DTensor state);
* 2 → 1: saved by 2 ranks under DDP and FSDP2, resumed by this process without any process group.

Tolerance. The checkpoint itself is lossless, but the 3 resumed steps run under another world
size, and their float32 products need not round as the uninterrupted run's do: FSDP2 multiplies
row shards (Newton-Muon's ``G·K⁻¹`` on a (rows/2)×n block), a rank's share of a batch is a smaller
batched product, and a CPU BLAS may pick another kernel or blocking for another shape (on an
AVX-512/AMX Xeon Newton-Muon-FSDP differed by 1.9e-6 and 8.6e-6, on AVX2 and Zen 5 by 0). Each
such rounding is at most an ulp of the values it touches. So each optimizer's bar is measured
here, on this CPU: twice the largest weight change that perturbing every input of the 3 resumed
steps by one float32 ulp causes in the uninterrupted run (at least 1e-6). Measured on Zen 5:
Muon and sign 6e-11, Neon 3e-8, Shampoo 2.2e-4 and Newton-Muon 4.1e-4 (their pseudo-inverse and
ridge on the rank ≤ 6 statistics of this 6-sample net amplify rounding). A broken resume moves the
weights far more: losing the optimizer state at step 3 changes them by 4.7e-3 (Shampoo) to 7e-2;
``test_bar_is_below_a_lost_state`` checks that each bar stays 5× below that, so the test can fail.
"""

import pytest
import torch

from . import spawn, workers

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("dcp"))
    reference = spawn.run(workers.dcp_one_process, 1, directory)[0]
    resumed = spawn.run(workers.dcp_two_processes, 2, directory)
    return directory, reference, resumed


def worst(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def local_run(name: str, perturb_from: int | None = None, fresh_optimizer_at: int | None = None) -> list[torch.Tensor]:
    """6 local steps of ``build_optimizer(model, name)`` (as :func:`workers.train_full`), with every
    input of the steps from ``perturb_from`` on moved by one float32 ulp (random sign), or with a
    new optimizer (its state lost) from step ``fresh_optimizer_at``."""
    import steepest

    def perturbed(step: int):
        x, y = batch(step)
        if perturb_from is None or step < perturb_from:
            return x, y
        sign = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(999 + step)) * 2 - 1
        return x * (1 + sign * 2.0**-23), y

    model = workers.make_net()
    build = lambda: steepest.build_optimizer(model, name, head=[model.head.weight], **workers.FULL_OPTIONS.get(name, {}))  # noqa: E731
    opt = build()
    batch = workers.batch
    for t in range(6):
        if t == fresh_optimizer_at:
            opt = build()
        opt.zero_grad()
        x, y = perturbed(t)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def bars():
    """Per optimizer: (the bar, the weight change of a lost optimizer state), measured at 1 thread
    as the workers run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name in workers.CHECKPOINTED:
            straight = local_run(name)
            rounding = worst(straight, local_run(name, perturb_from=3))
            # at least float32's precision after a few steps (~1e-5 relative): what one machine's
            # rounding happens to be is no bar for another's (an AVX2 EPYC measured 5.6e-6 where this
            # one's perturbation gave a bar of 4.6e-6)
            out[name] = (max(2e-5, 2 * rounding), worst(straight, local_run(name, fresh_optimizer_at=3)))
        return out
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", workers.CHECKPOINTED)
def test_bar_is_below_a_lost_state(bars, name):
    bar, lost = bars[name]
    assert bar <= lost / 5, (bar, lost)


@pytest.mark.parametrize("setting", ["ddp", "fsdp"])
@pytest.mark.parametrize("name", workers.CHECKPOINTED)
def test_resume_one_to_two(checkpoints, bars, name, setting):
    _, reference, resumed = checkpoints
    for rank in range(2):
        assert worst(resumed[rank][name, setting], reference[name]) <= bars[name][0], f"rank {rank}"


@pytest.mark.parametrize("setting", ["ddp", "fsdp"])
@pytest.mark.parametrize("name", workers.CHECKPOINTED)
def test_resume_two_to_one_without_process_group(checkpoints, bars, name, setting):
    directory, reference, _ = checkpoints
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers, so that the matmuls round the same way
    try:
        weights = workers.train_full(name, "local", 3, 3, load_from=f"{directory}/{setting}-{name}")
    finally:
        torch.set_num_threads(threads)
    assert worst(weights, reference[name]) <= bars[name][0]


def test_newton_muon_resume_runs_its_preconditioner(tmp_path):
    """A DCP resume of Newton-Muon (one process) warns about no missing input statistics (DCP's
    zero-lr initialisation step does not count) and steps as the uninterrupted run, which differs
    from Muon's by far more than the resume's bar: the preconditioner ran."""
    import warnings

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = workers.train_full("newton-muon", "local", 0, 6)
        muon = workers.train_full("muon", "local", 0, 6)
        workers.train_full("newton-muon", "local", 0, 3, save_to=f"{tmp_path}/nm")
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="NewtonMuon")
            resumed = workers.train_full("newton-muon", "local", 3, 3, load_from=f"{tmp_path}/nm")
    finally:
        torch.set_num_threads(threads)
    gap = max(float((a - b).norm() / b.norm()) for a, b in zip(muon, straight))
    error = max(float((a - b).norm() / b.norm()) for a, b in zip(resumed, straight))
    assert gap > 1e-2 and error <= 1e-6, (gap, error)

"""Neon F* under 2 and 3 gloo ranks (DDP) with a block width that changes within and across steps.

The F* ranks of seven matrices (five 256×128, two 128×256) go 1 → 40 → 1 in different patterns,
and one parameter skips a step. Before the fix the second step crashed (the stored basis had the
previous width, 16, while ``direction_state()`` announced the new one). Checked: the run finishes;
every update equals the single-process run's (1e-5 relative: the matrices' shares are batched
differently, and a matrix's result does not depend on its batch beyond rounding) and the float64
F* of its gradient (1e-3; measured ≤ 3e-5); every rank holds the same basis and rank, of the width
the single process stores. The same with error feedback (momentum 0.9): the captured parts travel
with the directions (F*: ``C``; nuclear: its factors), and every rank's momentum buffers equal the
single process's (1e-5)."""

import pytest
import torch

from steepest.directions.reference import reference_fstar, relative_error

from . import neon_width_workers as workers
from . import spawn


@pytest.fixture(scope="module")
def local():
    """The single-process run and the float64 F* of every gradient, on one thread (two OpenMP
    threads on a busy 2-core machine made each 256×128 float64 SVD 25× slower)."""
    threads = torch.get_num_threads()
    try:
        out = workers.local_run()  # sets one thread
        out["plain"]["reference"] = [
            [None if r is None else reference_fstar(workers.gradient(step, i, r).float().double()) for i, r in enumerate(ranks)]
            for step, ranks in enumerate(workers.RANKS)
        ]
        return out
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ddp():
    cache = {}

    def get(world: int) -> list[dict]:
        if world not in cache:
            cache[world] = spawn.run(workers.ddp_width_change, world)
        return cache[world]

    return get


def assert_updates_match(out: dict, local: dict, rank: int, tol: float) -> None:
    """Every update of a distributed run equals the single process's (``tol``, relative) and the
    float64 F* of its gradient (1e-3); a matrix without a gradient has no update."""
    for step, (got, want) in enumerate(zip(out["updates"], local["updates"])):
        for i, (D, ref) in enumerate(zip(got, want)):
            if ref is None:
                assert D is None
                continue
            assert relative_error(D, ref) <= tol, (rank, step, i)
            assert relative_error(D, local["reference"][step][i]) <= 1e-3, (rank, step, i)


@pytest.mark.parametrize("world", [2, 3])
def test_width_change_under_ddp(world, local, ddp):
    local = local["plain"]
    results = [out["plain"] for out in ddp(world)]
    for rank, out in enumerate(results):
        assert out["executor"] == "DistributedExecutor"
        assert_updates_match(out, local, rank, tol=1e-5)
        for i, (s, s0, sl) in enumerate(zip(out["state"], results[0]["state"], local["state"])):
            assert torch.equal(s["basis"], s0["basis"]) and torch.equal(s["rank"], s0["rank"]), (rank, i)
            assert s["basis"].shape == sl["basis"].shape and torch.equal(s["rank"], sl["rank"]), (rank, i)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("kind", ["error_feedback", "error_feedback_nuclear"])
def test_error_feedback_under_ddp(world, kind, local, ddp):
    local = local[kind]
    results = [out[kind] for out in ddp(world)]
    for rank, out in enumerate(results):
        for step, (got, want) in enumerate(zip(out["updates"], local["updates"])):
            for i, (D, ref) in enumerate(zip(got, want)):
                assert (D is None) == (ref is None)
                if ref is not None:
                    assert relative_error(D, ref) <= 1e-5, (rank, step, i)
        for i, (s, sl) in enumerate(zip(out["state"], local["state"])):
            assert relative_error(s["momentum_buffer"], sl["momentum_buffer"]) <= 1e-5, (rank, i)
            assert torch.equal(s["momentum_buffer"], results[0]["state"][i]["momentum_buffer"]), (rank, i)


@pytest.mark.parametrize("world", [2, 3])
def test_width_change_on_row_shards_krylov(world, local):
    """FSDP2 row shards, Neon on the Krylov path: the block grows within the step as in one
    process, so every update equals the single-process run's and the float64 F* (a rank of 40 on
    the step it appears: before, this path followed the rank only from the next step on)."""
    local = local["plain"]
    results = [out["krylov"] for out in spawn.run(workers.fsdp_width_change, world)]
    for rank, out in enumerate(results):
        assert out["rows"], "the Krylov path ran"
        assert_updates_match(out, local, rank, tol=1e-4)
        for i, (s, sl) in enumerate(zip(out["state"], local["state"])):
            assert s["basis"].shape == sl["basis"].shape and torch.equal(s["rank"], sl["rank"]), (rank, i)

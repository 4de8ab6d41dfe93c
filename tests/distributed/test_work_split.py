"""Each rank computes only its share of the directions: ``direction`` is wrapped to count the
matrices it is called on, and the counts must equal the plan of :func:`~steepest.distributed.
partition.assign` (each matrix computed exactly once per step, on one rank)."""

from collections import Counter

import pytest

from steepest.distributed.fsdp import row_ranges
from steepest.distributed.partition import assign, direction_flops

from . import workers

SPLIT = [n for n in workers.MATRIX_NAMES if not workers.OPTIMIZERS[n][0].elementwise]  # element-wise ones are not split


def expected_counts(name: str, world: int) -> list[Counter]:
    """Per rank: how many matrices of each shape it should compute per step."""
    opt = workers.build(name, workers.make_net())
    group = opt.param_groups[0]
    batches = Counter(opt.matrix_shape(p) for p in group["params"])
    shapes = list(batches)  # the order the optimizer buckets them (first appearance)
    plans = assign([(batches[s], direction_flops(opt, group, s)) for s in shapes], world)
    return [Counter({s: plan.counts[r] for s, plan in zip(shapes, plans) if plan.counts[r]}) for r in range(world)]


def computed_per_step(calls: list[tuple]) -> Counter:
    total = Counter()
    for shape, k in calls:
        total[tuple(shape)] += k
    return Counter({s: k // workers.STEPS for s, k in total.items()})


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("setting", ["ddp", "fsdp"])
@pytest.mark.parametrize("name", SPLIT)
def test_each_rank_computes_its_share(runs, world, setting, name):
    results = runs(world)
    expected = expected_counts(name, world)
    for rank, out in enumerate(results):
        assert computed_per_step(out[setting][name]["computed"]) == expected[rank], f"rank {rank}"
    everything = sum((computed_per_step(out[setting][name]["computed"]) for out in results), Counter())
    opt = workers.build(name, workers.make_net())
    assert everything == Counter(opt.matrix_shape(p) for p in opt.param_groups[0]["params"])


@pytest.mark.parametrize("world", [2, 3])
def test_uneven_batches_leave_ranks_idle_without_error(runs, world):
    """Batches of 1 matrix (more ranks than matrices) and of 5 and 3 (not multiples of W)."""
    expected = expected_counts("muon", world)
    assert any((8, 12) not in counts for counts in expected)  # some rank has none of that batch
    for rank, out in enumerate(runs(world)):
        assert computed_per_step(out["ddp"]["muon"]["computed"]) == expected[rank]


@pytest.mark.parametrize("world", [2, 3])
def test_krylov_path_iterates_each_rank_on_its_rows(runs, world):
    results = runs(world)
    opt = workers.build("neon-nuclear", workers.make_net())
    shapes = Counter(opt.matrix_shape(p) for p in opt.param_groups[0]["params"])
    for rank, out in enumerate(results):
        rows = out["fsdp_krylov"]["neon-nuclear"]["rows"]
        for shape, k in shapes.items():
            a, b = row_ranges(shape[0], world)[rank]
            assert rows.get(shape, 0) == (b - a) * k * workers.STEPS


def test_elementwise_directions_are_computed_where_the_data_is(runs):
    """Sign descent is not split: its direction costs less than gathering it. Under DDP every
    rank computes every matrix; under FSDP2 every rank its row shards, with no communication."""
    for rank, out in enumerate(runs(2)):
        per_step = computed_per_step(out["ddp"]["sign"]["computed"])
        assert sum(per_step.values()) == len(workers.matrices(workers.make_net()))
        sharded = computed_per_step(out["fsdp"]["sign"]["computed"])
        for (m, n), k in sharded.items():
            assert m <= -(-12 // 2)  # row shards, not whole matrices

"""The pieces that need no process group: the split plan, the byte packing, the row ranges, and
the single-process default."""

import math

import pytest
import torch
import torch.distributed as dist

import steepest
import steepest.distributed
from steepest.distributed.fsdp import row_ranges
from steepest.distributed.packing import Layout
from steepest.distributed.partition import Assignment, assign
from steepest.optim.base import LocalExecutor


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_plan_covers_every_matrix_once_in_padded_slots(world):
    batches = [(5, 10.0), (3, 4.0), (1, 100.0), (48, 1.0), (12, 7.0), (2, 2.0)]
    for (k, _), plan in zip(batches, assign(batches, world)):
        assert plan.slots == max(1, math.ceil(k / world))
        assert sum(plan.counts) == k and all(c in (plan.slots - 1, plan.slots) or k < world for c in plan.counts)
        owned = [i for r in range(world) for i in plan.owned(r)]
        assert owned == list(range(k))  # contiguous slices in rank order


def test_plan_balances_flops_across_batches():
    """Three single expensive matrices and 4 ranks: each lands on a different rank; the cheap
    batch's short slots go to the ranks that already have work."""
    plans = assign([(1, 100.0), (1, 100.0), (1, 100.0), (3, 1.0)], 4)
    owners = [next(r for r in range(4) if p.counts[r]) for p in plans[:3]]
    assert sorted(owners) == [0, 1, 2] or len(set(owners)) == 3
    idle = ({0, 1, 2, 3} - set(owners)).pop()
    assert plans[3].counts[idle] == 1


def test_gathered_slots_in_batch_order():
    """Padding only after the last real matrix: the gathered slots are the batch (a view)."""
    assert assign([(4, 1.0)], 2)[0].in_order and assign([(5, 1.0)], 3)[0].in_order
    plan = Assignment(k=3, world=2, slots=2, counts=(1, 2), starts=(0, 1))
    assert not plan.in_order and plan.slot_index() == [0, 2, 3]
    gathered = torch.arange(4)
    assert plan.in_matrix_order(gathered).tolist() == [0, 2, 3]
    assert assign([(4, 1.0)], 2)[0].in_matrix_order(gathered).data_ptr() == gathered.data_ptr()


def test_plan_is_deterministic():
    batches = [(7, 3.0), (2, 3.0), (9, 1.5)]
    assert assign(batches, 3) == assign(list(batches), 3)


def test_packing_round_trip_mixed_dtypes():
    layout = Layout.of({"direction": ((3, 5), torch.bfloat16), "basis": ((5, 2), torch.float32), "rank": ((), torch.int64)}, slots=2)
    values = {"direction": torch.randn(1, 3, 5).bfloat16(), "basis": torch.randn(1, 5, 2), "rank": torch.tensor([7])}
    block = layout.pack(values, torch.device("cpu"))
    assert block.numel() == layout.nbytes and layout.nbytes % 16 == 0
    gathered = torch.cat([block, torch.zeros_like(block)])  # a 2-rank gather, rank 1 empty
    parts = layout.unpack(gathered, world=2)
    assert torch.equal(parts["direction"][0, 0], values["direction"][0])
    assert torch.equal(parts["basis"][0, 0], values["basis"][0])
    assert parts["rank"][0, 0].item() == 7 and parts["rank"].dtype == torch.int64
    assert not parts["basis"][1].any() and not parts["direction"][0, 1].float().any()


def test_packing_rejects_state_other_than_announced():
    layout = Layout.of({"basis": ((5, 2), torch.float32)}, slots=1)
    with pytest.raises(RuntimeError, match="announced"):
        layout.pack({"basis": torch.randn(1, 5, 3)}, torch.device("cpu"))


@pytest.mark.parametrize("m", [1, 2, 3, 4, 7, 8, 12])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_row_ranges_are_torch_chunk(m, world):
    chunks = torch.arange(m).chunk(world)
    expected = [(int(c[0]), int(c[-1]) + 1) for c in chunks] + [(m, m)] * (world - len(chunks))
    assert row_ranges(m, world) == expected


def test_no_process_group_uses_the_local_executor():
    assert not dist.is_initialized()
    model = torch.nn.Linear(4, 4)
    opt = steepest.Muon([model.weight], lr=0.01)
    assert steepest.distributed.setting(opt) == "local"
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert type(opt.executor) is LocalExecutor


def test_world_size_one_uses_the_local_executor():
    from . import spawn, workers

    (result,) = spawn.run(workers.world_of_one, 1)
    assert result == {"setting": "local", "executor": "LocalExecutor", "diff": 0.0}


def test_unknown_row_shard_strategy_names_the_option_and_the_choices():
    from steepest.distributed import DistributedExecutor

    with pytest.raises(ValueError, match=r"unknown row_shards strategy 'bogus'; accepted values: 'auto', 'in_place', 'all_to_all'"):
        DistributedExecutor(row_shards="bogus")


def test_factor_packing_round_trip_and_refuses_what_was_not_announced():
    """``pack_factors`` / ``unpack_factors``: the all-gathered rows give back each matrix's factors
    (zeros in an unused slot); a direction that does not match ``direction_factors`` is refused
    with a line naming the optimizer."""
    from steepest.distributed.ddp import pack_factors, unpack_factors
    from steepest.execution import LowRank

    opt = steepest.Dion([torch.nn.Parameter(torch.randn(5, 3))])
    left, right = torch.randn(2, 5, 2), torch.randn(2, 3, 2)
    packed = pack_factors(opt, LowRank(left, right), 2, (5, 3), (2, torch.float32), slots=3, device="cpu")
    assert packed.shape == (3, (5 + 3) * 2) and not packed[2].any()
    back = unpack_factors(packed, (5, 3), 2)
    assert torch.equal(back.left[:2], left) and torch.equal(back.right[:2], right)
    assert torch.equal(back.dense()[:2], left @ right.mT)
    for wrong in (left @ right.mT, LowRank(left.double(), right.double()), LowRank(left[..., :1], right[..., :1])):
        with pytest.raises(RuntimeError, match="Dion.direction returned .* expected factors"):
            pack_factors(opt, wrong, 2, (5, 3), (2, torch.float32), slots=3, device="cpu")

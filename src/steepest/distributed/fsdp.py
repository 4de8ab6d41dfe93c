"""Row-sharded matrices (FSDP2 ``fully_shard``): all-to-all to whole matrices and back.

``fully_shard`` keeps each parameter as a DTensor sharded by rows over a 1-D mesh (``Shard(0)``,
``torch.chunk`` sizes: rank ``r`` holds rows ``r·c … (r+1)·c − 1``, ``c = ⌈m/W⌉``), and so are its
gradient and momentum. For a batch of same-shape matrices split by :mod:`.partition`:

1. one ``all_to_all_single`` sends every rank's row shards of each matrix to the matrix's owner,
   who concatenates them into whole matrices (dion's FSDP2 path);
2. the owner computes the directions of its share;
3. a second ``all_to_all_single`` returns each rank its rows of every direction (a direction
   announced as factors, ``direction_factors``, is all-gathered as its ``(m + n)·r`` factors
   instead, and each rank adds its rows of ``left·rightᵀ``), and an all-gather copies the
   direction state (Neon's basis, Shampoo's roots) to every rank, as under DDP.

The momenta of every batch travel first (all asynchronous), so the transfers overlap the
computation of the batches before them. An optimizer whose ``prepare_directions`` needs the
gradients (Shampoo's statistics) gets them whole by one all-gather of the row shards.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..execution import Bucket, LowRank
from .compat import all_gather_single
from .ddp import finish_state, pack_factors, share_of, start_state, unpack_factors
from .partition import Assignment

__all__ = ["ShardedBatch", "row_ranges", "check_row_sharded", "gather_rows"]


def row_ranges(m: int, world: int) -> list[tuple[int, int]]:
    """Each rank's rows ``[start, stop)`` of an ``m``-row matrix under ``Shard(0)``."""
    chunk = -(-m // world)
    return [(min(r * chunk, m), min((r + 1) * chunk, m)) for r in range(world)]


def check_row_sharded(p: Tensor, world: int) -> None:
    """Only ``fully_shard``'s layout is supported: ``Shard(0)`` on a 1-D mesh of all the ranks."""
    from torch.distributed.tensor import Shard

    mesh, placements = p.device_mesh, tuple(p.placements)
    if mesh.ndim != 1 or placements != (Shard(0),) or mesh.size() != world:
        raise NotImplementedError(
            f"steepest updates DTensor parameters sharded by rows over all ranks (fully_shard's default, "
            f"Shard(0) on a 1-D mesh of {world}); got placements {placements} on a mesh of shape "
            f"{tuple(mesh.shape)}. For HSDP (2-D meshes) or other placements, shard with fully_shard's defaults."
        )


def gather_rows(local: Tensor, m: int, process_group, world: int) -> Tensor:
    """Whole matrices ``(k, m, n)`` from every rank's row shards ``(k, rows, n)`` (one all-gather of
    shards padded to ``⌈m/W⌉`` rows)."""
    k, rows, n = local.shape
    chunk = -(-m // world)
    padded = local.new_zeros(k, chunk, n)
    padded[:, :rows] = local
    out = local.new_empty(world * k * chunk * n)
    all_gather_single(out, padded.reshape(-1), group=process_group)
    return out.view(world, k, chunk, n).transpose(0, 1).reshape(k, world * chunk, n)[:, :m]


class ShardedBatch:
    """One batch of row-sharded matrices, moved whole to their owners and back (see module doc)."""

    def __init__(self, executor, optimizer, group: dict, bucket: Bucket, plan: Assignment, process_group) -> None:
        self.ex, self.optimizer, self.group, self.bucket, self.plan, self.pg = executor, optimizer, group, bucket, plan, process_group
        m, n = bucket.shape
        self.rows = row_ranges(m, plan.world)
        start, stop = self.rows[executor.rank]
        self.mine = stop - start
        self.local = torch.stack([t.reshape(self.mine, n) for t in bucket.momenta])  # (k, rows, n)

    def start(self) -> None:
        bucket, plan, n = self.bucket, self.plan, self.bucket.shape[1]
        if self.optimizer.prepares_with_gradients:
            grads = torch.stack([g.reshape(self.mine, n) for g in bucket.grads])
            whole = gather_rows(grads, bucket.shape[0], self.pg, plan.world)
            view = Bucket(bucket.shape, bucket.params, list(whole.unbind(0)), bucket.momenta, bucket.states, bucket.names, skip=bucket.skip)
            self.optimizer.prepare_directions(self.group, view)
        send = self.local.new_zeros(plan.world * plan.slots, self.mine, n)
        send[plan.slot_index()] = self.local
        self.received = self.local.new_empty(plan.slots * bucket.shape[0] * n)
        self.handle = dist.all_to_all_single(
            self.received, send.reshape(-1),
            output_split_sizes=[plan.slots * (b - a) * n for a, b in self.rows],
            input_split_sizes=[plan.slots * self.mine * n] * plan.world,
            group=self.pg, async_op=True,
        )  # fmt: skip

    def compute(self) -> None:
        bucket, plan, rank = self.bucket, self.plan, self.ex.rank
        m, n = bucket.shape
        state = self.optimizer.direction_state(self.group, bucket)
        self.factors = self.optimizer.direction_factors(self.group, bucket)
        self.handle.wait()
        pieces = self.received.split([plan.slots * (b - a) * n for a, b in self.rows])
        whole = torch.cat([p.view(plan.slots, b - a, n) for p, (a, b) in zip(pieces, self.rows)], dim=1)
        values = {}
        owned = plan.owned(rank)
        D = None
        if len(owned):
            share = share_of(bucket, owned, momenta=list(whole[: len(owned)].unbind(0)), with_grads=False)
            D = self.ex.compute_direction(self.optimizer, self.group, share, factored=self.factors is not None)
            values = {key: share.stack_state(key) for key in state}
        if self.factors is not None:  # every rank gets every matrix's factors and keeps its rows of left
            send = pack_factors(self.optimizer, D, len(owned), bucket.shape, self.factors, plan.slots, whole.device)
            self.returned = send.new_empty(plan.world * plan.slots, send.shape[1])
            self.handle = all_gather_single(self.returned, send, group=self.pg, async_op=True)
        else:
            self._return_rows(D, len(owned), whole)
        start_state(self, state, values, whole.device)

    def _return_rows(self, D: Tensor | None, owned: int, whole: Tensor) -> None:
        """Start the all-to-all that gives every rank its rows of the dense directions."""
        plan, (m, n) = self.plan, self.bucket.shape
        block = whole.new_zeros(plan.slots, m, n)
        if D is not None:
            block[:owned] = D
        send = torch.cat([block[:, a:b].reshape(-1) for a, b in self.rows])
        self.returned = block.new_empty(plan.world * plan.slots * self.mine * n)
        self.handle = dist.all_to_all_single(
            self.returned, send,
            output_split_sizes=[plan.slots * self.mine * n] * plan.world,
            input_split_sizes=[plan.slots * (b - a) * n for a, b in self.rows],
            group=self.pg, async_op=True,
        )  # fmt: skip

    def finish(self) -> Tensor | LowRank:
        plan, n = self.plan, self.bucket.shape[1]
        self.handle.wait()
        if self.factors is None:
            D = plan.in_matrix_order(self.returned.view(plan.world * plan.slots, self.mine, n))
        else:
            whole = unpack_factors(plan.in_matrix_order(self.returned), self.bucket.shape, self.factors[0])
            start, stop = self.rows[self.ex.rank]
            D = LowRank(whole.left[:, start:stop], whole.right)
        finish_state(self)
        self.optimizer.directions_done(self.group, self.bucket)
        return D

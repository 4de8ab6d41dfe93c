"""The distributed executor: where a matrix optimizer computes its directions when several ranks
train one model.

It implements the executor seam of :mod:`steepest.execution` (``participating``,
``any_across_ranks``, ``sum_across_ranks``, ``directions``) with ``torch.distributed``
collectives, and calls only the optimizer's public hooks (it names no optimizer):

* every step the ranks agree (one small all-reduce per param group) on which parameters step: a
  gradient present on any rank counts, as zero where it is ``None``, so that no rank waits on a
  collective that another skips; on the first step they check that they built the same
  optimizer (:mod:`.agreement`);
* each same-shape batch of the group is computed by the strategy its layout calls for: replicated
  matrices (DDP) by :class:`~.ddp.ReplicatedBatch`, row-sharded DTensors (FSDP2) by
  :class:`~.fsdp.ShardedBatch` or, when the optimizer offers a ``row_shard_direction`` (Neon's
  block iteration, Dion's power step), in place by :class:`~.rowshards.RowShardBatch`;
  element-wise directions (sign descent) are computed where the data is, without communication;
* the batches that split by matrices share one FLOP-balanced plan (:mod:`.partition`), and every
  batch's transfers are asynchronous: all batches start, then compute in turn, then finish.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.distributed as dist
from torch import Tensor

from ..execution import Bucket, dense
from ..validation import check_choice
from .agreement import check_same_options
from .ddp import ReplicatedBatch
from .fsdp import ShardedBatch, check_row_sharded
from .partition import assign, direction_flops
from .rowshards import RowShardBatch

__all__ = ["DistributedExecutor", "ROW_SHARD_STRATEGIES"]

ROW_SHARD_STRATEGIES = ("auto", "in_place", "all_to_all")


class _Local:
    """An element-wise direction on the data this rank holds (whole matrices or row shards)."""

    def __init__(self, executor, optimizer, group: dict, bucket: Bucket) -> None:
        self.ex, self.optimizer, self.group, self.bucket = executor, optimizer, group, bucket

    def start(self) -> None:
        pass

    def compute(self) -> None:
        b = self.bucket
        local = b.momenta[0]
        shape = (local.shape[0], math.prod(local.shape[1:])) if local.ndim >= 2 else (1, local.numel())
        view = Bucket(shape, b.params, b.grads, b.momenta, b.states, b.names, skip=b.skip)
        self.D = self.ex.compute_direction(self.optimizer, self.group, view, factored=True)  # applied here

    def finish(self) -> Tensor:
        self.optimizer.directions_done(self.group, self.bucket)
        return self.D


class DistributedExecutor:
    """Splits the direction work of one optimizer across the ranks of ``process_group``.

    Args:
        process_group: the data-parallel group (default: the world).
        row_shards: how row-sharded (FSDP2) matrices are handled when the optimizer offers a
            ``row_shard_direction``: ``"in_place"`` runs it on each rank's rows with small
            collectives (:mod:`.rowshards`), ``"all_to_all"`` moves whole matrices to owners as for
            every other optimizer, ``"auto"`` (default) picks per batch: in place for matrices of at
            least :attr:`ROW_SHARDS_MIN_ENTRIES` entries (measured in docs/distributed.md).

    ``work`` counts, per matrix shape, the matrices whose direction this rank computed (and
    ``rows`` the rows that in-place batches iterated); the tests read it.
    """

    ROW_SHARDS_MIN_ENTRIES = 2**18

    def __init__(self, process_group=None, *, row_shards: str = "auto") -> None:
        check_choice(row_shards, "row_shards strategy", ROW_SHARD_STRATEGIES)
        self.row_shards = row_shards
        self.pg = process_group if process_group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.pg)
        self.world = dist.get_world_size(self.pg)
        self.work: Counter = Counter()
        self.rows: Counter = Counter()
        self._checked: tuple | None = None

    # --- the executor seam --------------------------------------------------------------------
    def participating(self, optimizer, group: dict) -> list[bool]:
        device = self._device(optimizer)
        self._check_options(optimizer, device)
        present = torch.tensor([p.grad is not None for p in group["params"]], dtype=torch.uint8, device=device)
        dist.all_reduce(present, op=dist.ReduceOp.MAX, group=self.pg)
        return [bool(x) for x in present.tolist()]

    def any_across_ranks(self, flags: Tensor) -> Tensor:
        flags = flags.to(torch.uint8)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.pg)
        return flags.bool()

    def sum_across_ranks(self, tensors: list[Tensor]) -> list[Tensor]:
        out = list(tensors)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            by_dtype.setdefault(t.dtype, []).append(i)
        for idx in by_dtype.values():
            flat = torch.cat([tensors[i].reshape(-1) for i in idx])
            dist.all_reduce(flat, group=self.pg)
            for i, piece in zip(idx, flat.split([tensors[i].numel() for i in idx])):
                out[i] = piece.view_as(tensors[i])
        return out

    def directions(self, optimizer, group: dict, buckets: list[Bucket]) -> list[Tensor]:
        kinds = [self._kind(optimizer, group, b) for b in buckets]
        split = [i for i, kind in enumerate(kinds) if kind in ("replicated", "sharded")]
        plans = assign([(len(buckets[i].params), direction_flops(optimizer, group, buckets[i].shape)) for i in split], self.world)
        plan_of = dict(zip(split, plans))
        batches = []
        for i, (bucket, kind) in enumerate(zip(buckets, kinds)):
            if kind == "local":
                batches.append(_Local(self, optimizer, group, bucket))
            elif kind == "sharded":
                batches.append(ShardedBatch(self, optimizer, group, bucket, plan_of[i], self._mesh_group(bucket)))
            elif kind == "replicated":
                batches.append(ReplicatedBatch(self, optimizer, group, bucket, plan_of[i], self.pg))
            else:  # the optimizer's own function on the row shards
                batches.append(RowShardBatch(self, optimizer, group, bucket, self._mesh_group(bucket), kind))
        for b in batches:
            b.start()
        for b in batches:
            b.compute()
        return [b.finish() for b in batches]

    # --- helpers ------------------------------------------------------------------------------
    def compute_direction(self, optimizer, group: dict, share: Bucket, factored: bool = False) -> Tensor:
        """``optimizer.direction`` on this rank's share, counted in :attr:`work`; a factored
        direction (:class:`~steepest.execution.LowRank`) as a tensor unless ``factored``."""
        self.work[share.shape] += len(share.momenta)
        D = optimizer.direction(group, share)
        return D if factored else dense(D).to(share.momenta[0].dtype)

    def count(self, shape: tuple[int, int], rows: int) -> None:
        self.rows[shape] += rows

    def prefers_in_place(self, bucket: Bucket) -> bool:
        """Row shards: the optimizer's in-place function (small collectives) or whole matrices."""
        if self.row_shards != "auto":
            return self.row_shards == "in_place"
        m, n = bucket.shape
        return m * n >= self.ROW_SHARDS_MIN_ENTRIES

    def _kind(self, optimizer, group: dict, bucket: Bucket):
        """``"local"``, ``"replicated"``, ``"sharded"``, or the in-place row-shard function."""
        if optimizer.elementwise:
            return "local"
        p = bucket.params[0]
        if not hasattr(p, "placements"):
            return "replicated"
        check_row_sharded(p, self.world)
        if self.prefers_in_place(bucket):
            in_place = optimizer.row_shard_direction(group, bucket)
            if in_place is not None:
                return in_place
        return "sharded"

    def _mesh_group(self, bucket: Bucket):
        return bucket.params[0].device_mesh.get_group()

    @staticmethod
    def _device(optimizer) -> torch.device:
        for group in optimizer.param_groups:
            for p in group["params"]:
                return p.device
        return torch.device("cpu")

    def _check_options(self, optimizer, device: torch.device) -> None:
        key = (id(optimizer), len(optimizer.param_groups))
        if self._checked != key:
            check_same_options(optimizer, self.pg, device)
            self._checked = key

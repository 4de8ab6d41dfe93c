"""The distributed executor: where a :class:`~steepest.optim.base.MatrixOptimizer` computes its
directions when several ranks train one model.

It implements the base class's executor seam (``participating``, ``any_across_ranks``,
``sum_across_ranks``, ``directions``) with ``torch.distributed`` collectives:

* every step the ranks agree (one small all-reduce per param group) on which parameters step: a
  gradient present on any rank counts, as zero where it is ``None``, so that no rank waits on a
  collective that another skips; on the first step they check that they built the same
  optimizer (:mod:`.agreement`);
* each same-shape batch of the group is computed by the strategy its layout calls for: replicated
  matrices (DDP) by :class:`~.ddp.ReplicatedBatch`, row-sharded DTensors (FSDP2) by
  :class:`~.fsdp.ShardedBatch` or, for Neon, :class:`~.krylov.KrylovBatch`; element-wise
  directions (sign descent) are computed where the data is, without communication;
* the batches that split by matrices share one FLOP-balanced plan (:mod:`.partition`), and every
  batch's transfers are asynchronous: all batches start, then compute in turn, then finish.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.distributed as dist
from torch import Tensor

from ..optim.base import Bucket, MatrixOptimizer
from .agreement import check_same_options
from .ddp import ReplicatedBatch
from .fsdp import ShardedBatch, check_row_sharded
from .dion_rows import DionRowBatch
from .krylov import KrylovBatch
from .partition import assign, direction_flops

__all__ = ["DistributedExecutor", "NEON_STRATEGIES"]

NEON_STRATEGIES = ("auto", "krylov", "all_to_all")
DION_STRATEGIES = ("auto", "row_shards", "all_to_all")


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
        view = Bucket(shape, b.params, b.grads, b.momenta, b.states, b.names)
        self.D = self.ex.compute_direction(self.optimizer, self.group, view)

    def finish(self) -> Tensor:
        self.optimizer.directions_done(self.group, self.bucket)
        return self.D


class DistributedExecutor:
    """Splits the direction work of one optimizer across the ranks of ``process_group``.

    Args:
        process_group: the data-parallel group (default: the world).
        neon: how Neon handles row-sharded (FSDP2) matrices: ``"krylov"`` iterates on the row
            shards (:mod:`.krylov`), ``"all_to_all"`` moves whole matrices to owners like every
            other optimizer, ``"auto"`` (default) picks per batch by :meth:`prefers_krylov`.
        dion: the same choice for Dion: ``"row_shards"`` runs its power iteration on the row
            shards with small collectives (:mod:`.dion_rows`), ``"all_to_all"`` moves whole
            matrices, ``"auto"`` (default) picks per batch by :meth:`prefers_dion_rows`.

    ``work`` counts, per matrix shape, the matrices whose direction this rank computed (and
    ``rows`` the row-shard rows that the Krylov path iterated); the tests read it.
    """

    # Crossover of the Neon strategies, measured by benchmarks/distributed.py (docs/distributed.md;
    # 2 ranks, gloo, CPU): the Krylov path pays ~4 latency-bound collectives per iteration and
    # repeats the small QR/SVD on every rank, the all-to-all path moves 2·m·n numbers per matrix.
    # Equal at GPT-2 shapes of width 384 (147K and 590K entries), Krylov 25-70% faster from 512 on.
    KRYLOV_MIN_ENTRIES = 2**18
    # Dion (benchmarks/distributed.py --optimizer dion --setting fsdp --dion ..., 2 gloo ranks on one
    # CPU, GPT-2 layer shapes): the row path is slower at width 128 (17 vs 11 ms), level at 384 and
    # 768 (53 vs 50, 233 vs 232 ms), 1.47× faster at 1536 (0.72 vs 1.06 s: every matrix splits evenly
    # by rows, where whole matrices do not), and it always moves less data.
    DION_ROWS_MIN_ENTRIES = 2**18

    def __init__(self, process_group=None, *, neon: str = "auto", dion: str = "auto") -> None:
        if neon not in NEON_STRATEGIES:
            raise ValueError(f"unknown neon strategy {neon!r}; accepted values: {', '.join(map(repr, NEON_STRATEGIES))}")
        if dion not in DION_STRATEGIES:
            raise ValueError(f"unknown dion strategy {dion!r}; accepted values: {', '.join(map(repr, DION_STRATEGIES))}")
        self.dion = dion
        self.pg = process_group if process_group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.pg)
        self.world = dist.get_world_size(self.pg)
        self.neon = neon
        self.work: Counter = Counter()
        self.rows: Counter = Counter()
        self._checked: tuple | None = None

    # --- the executor seam --------------------------------------------------------------------
    def participating(self, optimizer: MatrixOptimizer, group: dict) -> list[bool]:
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

    def directions(self, optimizer: MatrixOptimizer, group: dict, buckets: list[Bucket]) -> list[Tensor]:
        kinds = [self._kind(optimizer, group, b) for b in buckets]
        split = [i for i, kind in enumerate(kinds) if kind in ("replicated", "sharded")]
        plans = assign([(len(buckets[i].params), direction_flops(optimizer, group, buckets[i].shape)) for i in split], self.world)
        plan_of = dict(zip(split, plans))
        batches = []
        for i, (bucket, kind) in enumerate(zip(buckets, kinds)):
            if kind == "local":
                batches.append(_Local(self, optimizer, group, bucket))
            elif kind == "krylov":
                batches.append(KrylovBatch(self, optimizer, group, bucket, self._mesh_group(bucket)))
            elif kind == "dion_rows":
                batches.append(DionRowBatch(self, optimizer, group, bucket, self._mesh_group(bucket)))
            elif kind == "sharded":
                batches.append(ShardedBatch(self, optimizer, group, bucket, plan_of[i], self._mesh_group(bucket)))
            else:
                batches.append(ReplicatedBatch(self, optimizer, group, bucket, plan_of[i], self.pg))
        for b in batches:
            b.start()
        for b in batches:
            b.compute()
        return [b.finish() for b in batches]

    # --- helpers ------------------------------------------------------------------------------
    def compute_direction(self, optimizer: MatrixOptimizer, group: dict, share: Bucket) -> Tensor:
        """``optimizer.direction`` on this rank's share, counted in :attr:`work`."""
        self.work[share.shape] += len(share.momenta)
        return optimizer.direction(group, share)

    def count(self, shape: tuple[int, int], rows: int) -> None:
        self.rows[shape] += rows

    def prefers_krylov(self, optimizer, group: dict, bucket: Bucket) -> bool:
        """Neon on row shards: iterate in place (Krylov) or move whole matrices (all-to-all)."""
        if optimizer.uses_dense_svd(group, bucket, optimizer.block_width(group, bucket)):
            return False  # a dense SVD needs the whole matrix
        if self.neon != "auto":
            return self.neon == "krylov"
        m, n = bucket.shape
        return m * n >= self.KRYLOV_MIN_ENTRIES

    def prefers_dion_rows(self, bucket: Bucket) -> bool:
        """Dion on row shards: its power iteration in place (small collectives) or whole matrices."""
        if self.dion != "auto":
            return self.dion == "row_shards"
        m, n = bucket.shape
        return m * n >= self.DION_ROWS_MIN_ENTRIES

    def _kind(self, optimizer, group: dict, bucket: Bucket) -> str:
        if optimizer.elementwise:
            return "local"
        p = bucket.params[0]
        if not hasattr(p, "placements"):
            return "replicated"
        check_row_sharded(p, self.world)
        if hasattr(optimizer, "block_width") and self.prefers_krylov(optimizer, group, bucket):
            return "krylov"
        if getattr(optimizer, "row_shard_strategy", None) == "dion_rows" and self.prefers_dion_rows(bucket):
            return "dion_rows"
        return "sharded"

    def _mesh_group(self, bucket: Bucket):
        return bucket.params[0].device_mesh.get_group()

    @staticmethod
    def _device(optimizer: MatrixOptimizer) -> torch.device:
        for group in optimizer.param_groups:
            for p in group["params"]:
                return p.device
        return torch.device("cpu")

    def _check_options(self, optimizer: MatrixOptimizer, device: torch.device) -> None:
        key = (id(optimizer), len(optimizer.param_groups))
        if self._checked != key:
            check_same_options(optimizer, self.pg, device)
            self._checked = key

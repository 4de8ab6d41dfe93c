"""Neon: steepest descent under the nuclear norm (rank 1) or the F* norm (low rank) (Neon seed)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..directions.collectives import LOCAL, RowCollectives
from ..directions.fstar import FSTAR_VARIANTS, fstar_adaptive, fstar_block, fstar_dense
from ..directions.lowrank import random_block
from ..directions.nuclear import SIGMA_MODES, nuclear_block
from ..validation import check_bool, check_choice, check_int
from ..execution import LowRank, shard_row_start
from .base import Bucket, MatrixOptimizer, check_hyperparameter, local_tensor
from .registry import Registration, register

__all__ = ["Neon", "block_columns"]

NEON_MODES = ("nuclear", "fstar")
BLOCK_MULTIPLE = 8


def block_columns(rank: int, oversample: int, m: int, n: int) -> int:
    """Columns of the iterated block: ``rank + oversample`` rounded up to a multiple of 8, at most
    ``min(m, n)``: BLAS and tensor cores run such widths much faster than odd ones
    (docs/performance.md, "Neon's block width")."""
    want = rank + oversample
    return min(-(-want // BLOCK_MULTIPLE) * BLOCK_MULTIPLE, m, n)


def _fit(basis: Tensor, width: int, pad: Tensor | None) -> Tensor:
    """``basis`` (``n × j``) cut to ``width`` columns, or completed with columns of ``pad``."""
    j = basis.shape[-1]
    return basis[..., :width] if j >= width else torch.cat([basis, pad[..., : width - j]], dim=-1)


def _precision(M: Tensor) -> torch.dtype:
    return torch.float64 if M.dtype == torch.float64 else torch.float32


# Default rates (what build_optimizer uses without lr=): Muon's and Dion's 0.02 and the Neon rates below are
# the candidates that lose the least of the achievable improvement on the worst of the harness's tasks,
# at the end and early in the run (docs/results/defaults.md, from the committed sweeps).
@register(
    Registration("neon-nuclear", "Neon, nuclear norm: rank-1 update sigma1*u1*v1^T by warm-started power iteration", 1.0, family="nuclear", color="#0072b2", options={"mode": "nuclear"}),
    Registration("neon-fstar", "Neon, F* norm: low-rank soft-thresholded update U[S-tau]+V^T, adaptive rank", 1.0, family="fstar", color="#009e73", options={"mode": "fstar"}),
    Registration(
        "neon-nuclear-drop", "Neon nuclear with sigma dropped: u1*v1^T, as in the Neon authors' code", 0.06,
        family="neon-drop", color="#6fa8dc", options={"mode": "nuclear", "sigma": "drop"},
    ),
    Registration(
        "neon-fstar-drop", "Neon F* with sigma dropped: U[S-tau]+V^T scaled to spectral norm 1", 0.03,
        family="neon-drop", color="#7fcdbb", options={"mode": "fstar", "sigma": "drop"},
    ),
    Registration(
        "neon-nuclear-ef", "Neon nuclear with Dion's error feedback: B <- B + (1-mu)G, D = sigma1*u1*v1^T of B, B <- B - (1-mu)*sigma1*u1*v1^T", 0.5,
        options={"mode": "nuclear", "nesterov": False, "error_feedback": True},
    ),
    Registration(
        "neon-fstar-ef", "Neon F* with Dion's error feedback: the captured part U_r S_r V_r^T leaves the momentum, (1-mu) of it each step", 1.0,
        options={"mode": "fstar", "nesterov": False, "error_feedback": True},
    ),
)  # fmt: skip
class Neon(MatrixOptimizer):
    r"""Neon on (Nesterov) EMA momentum ``M``: ``W ← (1 − ηλ)W − η·D(M)`` with

    * ``mode="nuclear"``: ``D = σ₁u₁v₁ᵀ``, the nuclear-norm minimiser (seed eq. 2, rank 1);
    * ``mode="fstar"``: ``D = U[Σ − τ]₊Vᵀ``, ``Σ[σ − τ]₊ = τ`` (seed eq. 3; ``variant="mean_of_norms"``
      for the exact minimiser of the norm the seed names, see :func:`steepest.directions.fstar_direction`).

    The seed computed the top triplets with a Lanczos SVD each step. Here each matrix keeps the
    previous step's right singular block ``V`` (``n × l``) in its state and runs ``iters`` warm
    block power iterations plus a Rayleigh–Ritz step on the batch of same-shape matrices: 4mnl
    FLOPs per iteration, against Muon's ~5·(4m²n + 2m³). F* needs the top ``r + 1`` values for an
    exact τ. Its block width ``l`` follows the batch's largest rank ``r`` of the previous step
    (``l = r + 1 + oversample`` rounded up to a multiple of 8, see :func:`block_columns`; growing
    or shrinking at once rather than by one as in the seed's Algorithm 2), and within the step a
    matrix whose computed rank needs more (``r + 1 + oversample > l``) is recomputed at ``2l``,
    ``4l``, … (``max(iters, cold_iters)`` iterations from its block padded with random columns), so
    a rank that jumps from 2 to 40 is exact on that step (:func:`~steepest.directions.fstar_adaptive`).
    A batch whose block would exceed ``dense_fraction·min(m, n)`` at the start of the step, or a
    matrix whose block would have to grow past it, uses a dense SVD instead. The stored basis keeps
    the step's starting width ``l`` (the first ``l`` vectors of the final block), so
    :meth:`direction_state` announces exactly what is stored, on every rank; a basis of another
    width (a parameter that skipped steps) is cut or padded to ``l``, and a block more than
    ``oversample`` columns wider than some stored basis runs ``cold_iters``.

    ``sigma`` decides the update's scale. ``"keep"`` (default) is the seed's formulas: the exact
    steepest-descent minimiser, whose size follows the gradient's (like SGD), so its learning rate
    is on the gradient's scale. ``"drop"`` divides ``D`` by its top singular value, as the Neon
    authors' code does for nuclear (``u₁v₁ᵀ``): a normalised step like Muon's but of rank 1 (or
    r), with a learning rate on Muon's scale. The default follows the seed because the library's
    contract is the exact minimiser; the harness tunes each one's learning rate.

    Args:
        lr: η (default 1.0, for ``sigma="keep"``, whose step is η·σ₁ of the momentum; with
            ``"drop"`` use ~0.03–0.06). The best rates differ 10–30× across the harness's tasks
            (σ kept: 0.3 on the Shakespeare GPT, 9 on the digits MLP), so sweep them; 1.0 is the
            rate whose worst task loses least of the achievable improvement (at most 5% at the end,
            28% (nuclear) / 40% (F*) after a tenth of the run; docs/results/defaults.md).
        mode: ``"nuclear"`` or ``"fstar"``. variant: F*'s ``"seed"`` or ``"mean_of_norms"``.
        momentum, nesterov, weight_decay, nonfinite: as in :class:`~steepest.optim.Muon`. With
            ``sigma="keep"`` the step is ``lr·σ₁`` of the momentum, and the default lr 1.0 was
            chosen at μ = 0.95. A lower μ averages less gradient noise out of ``M``, so σ₁ and the
            step grow: at μ = 0.8 or 0 the default rate diverged on a small MLP (issue 24's
            report). Lower lr together with μ (sweep it), or use ``sigma="drop"``, whose step does
            not grow with the gradient.
        iters: warm power iterations per step (default 1 for nuclear, 2 for F*); cold_iters: on the
            first step (4).
        oversample: extra block columns, at least (default 8; the block is rounded up to a
            multiple of 8 columns, so nuclear iterates 16).

    The defaults come from ``benchmarks/lowrank_accuracy.py`` on momenta captured from the harness's
    tasks: with one warm iteration and 8 extra columns the nuclear update's σ₁ is within 1e-3 of
    float64 (worst case; 4e-2 with 2 extra columns), and F* needs two iterations for its top
    ``r + 1`` values to be within 1e-2 (docs/performance.md).
        initial_rank: F*'s first guess of r (default 4). dense_fraction: see above (0.25).
        compile: ``torch.compile(fullgraph=True)`` the low-rank iteration and update (default False).
        error_feedback: Dion's error feedback (Ahn et al. 2025, Algorithm 1) on Neon's low-rank
            step (default False; needs ``nesterov=False``). Per matrix, with ``C`` the part of the
            momentum that the step captures (``σ₁u₁v₁ᵀ`` for nuclear, ``U_rΣ_rV_rᵀ`` over the F*
            update's rank ``r``; whatever ``sigma``)::

                B ← B + (1 − μ)G;   D, C from B;   B ← B − (1 − μ)C;   W ← (1 − ηλ)W − η·D

            In the captured directions the buffer decays like Neon's EMA (by μ, on the same
            scale); elsewhere it accumulates without decay until a later step captures it, so the
            rank-1 (or rank-r) steps move on to the directions they left behind instead of
            following the momentum's persistent top direction. Under DDP ``C`` travels with the
            direction in the state all-gather (nuclear: its factors ``σ₁u₁``, ``v₁``, ``m + n``
            numbers per matrix; F*: ``C`` itself, ``m × n``, since its rank is known only after the
            step) and every rank subtracts it from its copy; on FSDP2 row shards each rank
            subtracts its rows of ``C`` (the in-place path computes only those rows).

    Host reads (F* only): the bucket's largest rank of the previous step, to size the block (on
    CUDA a non-blocking copy made at the end of that step, so it does not stall the device; a
    direct read after a load or a change of the bucket's members); and, to decide the in-step
    growth, one read of ``k`` flags per bucket and step (more only when a rank outgrows the block;
    none when the block already spans ``min(m, n)`` columns or the dense SVD is used). Nuclear
    reads nothing.
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1.0,
        mode: str = "nuclear",
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        sigma: str = "keep",
        variant: str = "seed",
        iters: int | None = None,
        cold_iters: int = 4,
        oversample: int = 8,
        initial_rank: int = 4,
        dense_fraction: float = 0.25,
        nonfinite: str = "raise",
        compile: bool = False,
        cautious_weight_decay: bool = False,
        error_feedback: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, mode=mode, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, sigma=sigma, variant=variant,
            iters=iters, cold_iters=cold_iters, oversample=oversample, initial_rank=initial_rank,
            dense_fraction=dense_fraction, nonfinite=nonfinite, compile=compile, cautious_weight_decay=cautious_weight_decay, error_feedback=error_feedback,
        )
        self._pending_rank: dict[tuple, tuple[Tensor, object]] = {}  # see _pending
        super().__init__(params, defaults)

    def validate_group(self, group: dict) -> None:
        super().validate_group(group)
        for key, choices in (("mode", NEON_MODES), ("sigma", SIGMA_MODES), ("variant", FSTAR_VARIANTS)):
            check_choice(group[key], key, choices)
        if group["iters"] is None:
            group["iters"] = 1 if group["mode"] == "nuclear" else 2
        for key, minimum in (("iters", 0), ("cold_iters", 1), ("oversample", 0), ("initial_rank", 1)):
            check_int(group[key], key, minimum=minimum)
        check_hyperparameter("dense_fraction", group["dense_fraction"], high=1.0)
        group.setdefault("error_feedback", False)  # checkpoints from before the option
        check_bool(group["error_feedback"], "error_feedback")
        if group["error_feedback"] and group["nesterov"]:
            raise ValueError("error_feedback=True accumulates Dion's momentum, which has no Nesterov form; pass nesterov=False")

    def block_width(self, group: dict, bucket: Bucket) -> int:
        """Columns the step starts iterating (and stores as each matrix's basis), from the whole
        batch's largest F* rank of the previous step; the same on every rank."""
        m, n = bucket.shape
        rank = 1 if group["mode"] == "nuclear" else self._previous_rank(group, bucket.whole) + 1
        return block_columns(rank, group["oversample"], m, n)

    def uses_dense_svd(self, group: dict, bucket: Bucket, width: int) -> bool:
        return group["mode"] == "fstar" and width > group["dense_fraction"] * min(*bucket.shape)

    def direction_flops(self, group: dict, shape: tuple[int, int]) -> float:
        """``(iters + 1)·4mnl + (m + n)l²`` for a block of width ``l`` (:func:`block_columns`, from
        ``initial_rank`` for F*); used to balance the distributed split."""
        m, n = shape
        rank = 1 if group["mode"] == "nuclear" else group["initial_rank"] + 1
        width = block_columns(rank, group["oversample"], m, n)
        return float((group["iters"] + 1) * 4 * m * n * width + (m + n) * width**2)

    def direction_state(self, group: dict, bucket: Bucket) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        dtype = _precision(bucket.params[0])
        layout = {"basis": ((bucket.shape[1], self.block_width(group, bucket)), dtype)}
        if group["mode"] == "fstar":
            layout["rank"] = ((), torch.int64)
        if group.get("error_feedback", False) and group["mode"] == "nuclear":
            m, n = bucket.shape
            layout["captured_left"], layout["captured_right"] = ((m, 1), dtype), ((n, 1), dtype)
        elif group.get("error_feedback", False):
            layout["captured"] = (tuple(bucket.shape), dtype)
        return layout

    def direction_factors(self, group: dict, bucket: Bucket) -> tuple[int, torch.dtype] | None:
        """Nuclear: the rank-1 factors ``(w·u₁, v₁)`` in the iteration's precision; F*: ``None``
        (its rank, and so its factors' width, is known only after the step)."""
        if group["mode"] != "nuclear":
            return None
        return 1, _precision(bucket.params[0])

    @staticmethod
    def _one_at_a_time(group: dict, bucket: Bucket) -> bool:
        """Nuclear on a CPU: each matrix's rank-1 iteration on its own (views, no (k, m, n) copy)."""
        return bucket.momenta[0].device.type == "cpu" and group["mode"] == "nuclear" and not group["compile"] and len(bucket.momenta) > 1

    def local_units(self, group: dict, bucket: Bucket) -> list[Bucket]:
        """One matrix at a time where :meth:`_one_at_a_time`, so that the kept buffers hold one matrix."""
        return bucket.singles() if self._one_at_a_time(group, bucket) else [bucket]

    def direction(self, group: dict, bucket: Bucket) -> Tensor | LowRank:
        device = bucket.momenta[0].device
        if self._one_at_a_time(group, bucket):
            # one matrix at a time on views of the momenta: no (k, m, n) copy (CPU BLAS runs the
            # matrix-vector products as fast one by one); the factors are stacked instead
            parts = [self._low_rank_direction(group, single, bucket.matrix(single.momenta[0]).unsqueeze(0), LOCAL) for single in bucket.singles()]
            return LowRank(torch.cat([d.left for d in parts]), torch.cat([d.right for d in parts]))
        M = bucket.stack(scratch=lambda shape, dtype: self.stack_buffer(shape, dtype, device))
        return self._low_rank_direction(group, bucket, M, LOCAL)

    def stack_buffer(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """Where a batch's momenta are stacked when they are not already back to back: in a streamed
        CPU step one :meth:`workspace` for every batch (each is used up before the next), else a
        :meth:`scratch` buffer per shape."""
        if self.__dict__.get("_streaming"):
            return self.workspace(("stack",), [shape], dtype, device)[0]
        return self.scratch(("stack", shape), shape, dtype, device)

    def row_shard_direction(self, group: dict, bucket: Bucket):
        """On row shards: the same block iteration with the rows' collectives (a dense SVD, for an
        F* rank past ``dense_fraction``, needs whole matrices: ``None`` then)."""
        if self.uses_dense_svd(group, bucket, self.block_width(group, bucket)):
            return None
        return lambda M, ops: self._low_rank_direction(group, bucket, M, ops)

    def _low_rank_direction(self, group: dict, bucket: Bucket, M: Tensor, ops: RowCollectives) -> LowRank:
        """The factors of ``D`` of the ``(k, m, n)`` momenta ``M`` (this rank's rows of ``left``
        with row-split ``ops``), the basis, rank and captured part stored in the matrices' states."""
        width = self.block_width(group, bucket)
        capture = group["error_feedback"]
        rank = None
        if self.uses_dense_svd(group, bucket, width):
            D, V, rank, C = self.math(group, fstar_dense)(M, group["variant"], group["sigma"], capture, factored=True)
            V = V[..., :width]
        elif group["mode"] == "nuclear":
            init, iters = self.start_block(group, bucket, width, M)
            # the factors w·u₁, v₁ (this rank's rows of u₁ with row-split ops): the step adds them
            # as a rank-1 update, in the iteration's precision (bf16 weights add it formed)
            if ops is LOCAL:
                D, V, C = self.math(group, nuclear_block)(M, init, iters, group["sigma"], capture, factored=True)
            else:
                D, V, C = nuclear_block(M, init, iters, group["sigma"], capture, ops=ops, factored=True)
            self._store(bucket, V, None, C)
            return D
        else:
            init, iters = self.start_block(group, bucket, width, M)
            D, V, rank, C = fstar_adaptive(
                M, init, iters=iters, grow_iters=max(group["iters"], group["cold_iters"]), oversample=group["oversample"],
                max_width=self.max_block_width(group, bucket) if ops is LOCAL else min(bucket.shape),
                variant=group["variant"], sigma=group["sigma"], capture=capture,
                block_step=self.math(group, fstar_block), dense_step=self.math(group, fstar_dense), ops=ops, factored=True,
            )  # fmt: skip
        self._store(bucket, V, rank, C)
        return D  # factors in the iteration's precision (the widest block's columns): bf16 weights add it formed

    @staticmethod
    def _store(bucket: Bucket, V: Tensor, rank: Tensor | None, C) -> None:
        bucket.store_state("basis", V)
        if rank is not None:
            bucket.store_state("rank", rank)
        if isinstance(C, tuple):  # nuclear: the factors (σ₁u₁, v₁), m + n numbers per matrix
            bucket.store_state("captured_left", C[0])
            bucket.store_state("captured_right", C[1])
        elif C is not None:
            bucket.store_state("captured", C)  # removed from the momentum in directions_done

    def max_block_width(self, group: dict, bucket: Bucket) -> int:
        """The widest block F* iterates, ``⌊dense_fraction·min(m, n)⌋``; wider needs the dense SVD."""
        return int(group["dense_fraction"] * min(*bucket.shape))

    def start_block(self, group: dict, bucket: Bucket, width: int, M: Tensor) -> tuple[Tensor, int]:
        """The ``(k, n, width)`` start block and the number of iterations (``M``: the ``(k, ·, n)``
        momenta or their row shards, for the batch shape, dtype and device).

        Each matrix's stored basis is cut to ``width`` or padded with the fixed random columns (a
        parameter that skipped steps may hold a basis of another width). Warm (``iters``) when
        every matrix of the whole batch has a basis at most ``oversample`` columns narrower than
        ``width``; otherwise, as on the first step, ``cold_iters``: the added random columns
        carry no information yet. Decided on the whole batch, so every rank decides alike."""
        n = bucket.shape[1]
        dtype = _precision(M)
        states = bucket.whole.states
        warm = all("basis" in s for s in states)
        if not warm:
            cold = random_block(M.shape[:-2], n, width, dtype=dtype, device=M.device)
            init = [s["basis"] if "basis" in s else cold[0] for s in bucket.states]
        else:
            init = [s["basis"] for s in bucket.states]
            warm = min(s["basis"].shape[-1] for s in states) + group["oversample"] >= width
        # the fixed random columns, drawn only when some basis is narrower than the block
        pad = random_block(torch.Size(), n, width, dtype=dtype, device=M.device) if any(b.shape[-1] < width for b in init) else None
        block = torch.stack([_fit(b.to(dtype), width, pad) for b in init])
        return block, group["iters"] if warm else group["cold_iters"]

    def directions_done(self, group: dict, bucket: Bucket) -> None:
        if group["mode"] == "fstar":
            self._remember_rank(bucket, bucket.stack_state("rank"))
        if group.get("error_feedback", False):
            self._feed_back_error(group, bucket)

    def update_momentum(self, group: dict, grads: list[Tensor], states: list[dict], skip: Tensor | None) -> list[Tensor]:
        """With ``error_feedback``: ``B ← B + (1 − μ)G`` (no decay: what the steps leave out
        accumulates), the buffers themselves are the momenta; otherwise the EMA of the base class."""
        if not group.get("error_feedback", False):
            return super().update_momentum(group, grads, states, skip)
        bufs = [local_tensor(s["momentum_buffer"]) for s in states]
        torch._foreach_add_(bufs, grads, alpha=1 - group["momentum"])  # skipped steps' grads are zero
        return bufs

    def _feed_back_error(self, group: dict, bucket: Bucket) -> None:
        """``B ← B − (1 − μ)·C`` for every matrix of the batch (on every rank), ``C`` the captured
        part that :meth:`direction` stored; not on a step skipped for non-finite gradients."""
        weight = -(1 - group["momentum"])
        skip = bucket.skip
        for state, param in zip(bucket.states, bucket.params):
            buf = local_tensor(state["momentum_buffer"])
            C = state.pop("captured", None)
            if "captured_left" in state:  # σ₁u₁v₁ᵀ as a broadcast product (a K=1 matmul is slow on CPU BLAS)
                left, right = state.pop("captured_left"), state.pop("captured_right")
                shape = (left.shape[0], right.shape[0])
                out = self.scratch(("captured", shape), shape, torch.promote_types(left.dtype, right.dtype), left.device)
                C = torch.mul(left, right.mT, out=out)
            B = bucket.matrix(buf)  # (out, in), also of weights stored (in, out); a row shard's rows
            if C.shape[-2] != B.shape[-2]:  # whole C from the matrix's owner: this rank's rows of it
                start = shard_row_start(param, bucket.shape[0])
                C = C[start : start + B.shape[-2]]
            B = B + C * (weight if skip is None else torch.where(skip, 0.0, weight))
            bucket.write_matrix(buf, B)  # a copy, so that channels_last buffers are written too

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._pending.clear()  # the ranks remembered before the load are not the loaded ones

    @property
    def _pending(self) -> dict[tuple, tuple[Tensor, object]]:
        """Each batch's largest rank of the previous step, by the batch's members: a memo, not
        state (``copy.deepcopy`` and pickling drop it, as torch's ``Optimizer.__getstate__`` keeps
        only defaults, state and groups; the next step reads the saved ranks once instead)."""
        return self.__dict__.setdefault("_pending_rank", {})

    def _key(self, bucket: Bucket) -> tuple:
        return bucket.matrix_keys()

    def _remember_rank(self, bucket: Bucket, rank: Tensor) -> None:
        """Keep the batch's largest rank for the next step's width, keyed by the batch's members.
        A memo of any other batch that shares a member is dropped: its ranks are no longer current
        (a parameter whose gradient comes and goes changes the membership of its batch)."""
        key = self._key(bucket)
        members = set(key)
        for other in [k for k in self._pending if k != key and members.intersection(k)]:
            del self._pending[other]
        top = rank.max()
        if top.device.type == "cuda":
            host = torch.empty((), dtype=top.dtype, pin_memory=True)
            host.copy_(top, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending[key] = (host, event)
        else:
            self._pending[key] = (top, None)

    def _previous_rank(self, group: dict, bucket: Bucket) -> int:
        """The batch's largest F* rank of the previous step (``initial_rank`` before any, and at
        least ``initial_rank`` while some matrix has none)."""
        ranks = [s["rank"] for s in bucket.states if "rank" in s]
        if not ranks:
            return group["initial_rank"]
        pending = self._pending.get(self._key(bucket))
        if pending is None:  # after load_state_dict or a change of membership: one read of the saved ranks
            top = int(torch.stack(ranks).max())
            return top if len(ranks) == len(bucket.states) else max(top, group["initial_rank"])
        value, event = pending
        if event is not None:
            event.synchronize()  # waits for that small copy only, made a step ago
        return int(value)

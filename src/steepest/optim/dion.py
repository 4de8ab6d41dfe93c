"""Dion: a rank-r orthonormal update from one warm power iteration, with error feedback (Ahn et al. 2025)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..directions.collectives import LOCAL, RowCollectives
from ..directions.dion import DionFactors, dion_rank, dion_update, error_feedback, initial_basis, next_basis, power_step
from ..directions.spectral import SPECTRAL_SCALES, spectral_scale
from ..validation import check_choice, check_number
from ..execution import LowRank, shard_row_start
from .base import Bucket, MatrixOptimizer, local_tensor
from .registry import Registration, register

__all__ = ["Dion"]


def _precision(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@register(Registration(
    "dion", "Dion: rank-r orthonormal update P Q^T by one warm power iteration, error feedback in the momentum (r = min(m,n)/4)", 0.02,
    family="spectral", color="#7b3fa0",
))  # fmt: skip
class Dion(MatrixOptimizer):
    r"""Dion (Ahn et al. 2025, arXiv 2504.05295, Algorithm 1): per matrix, with momentum ``M``,
    right basis ``Q`` (``n × r``, ``r = ⌈rank_fraction·min(m, n)⌉``) and gradient ``G``,

    .. math::
        B = M + G,\ P = \mathrm{orth}(BQ),\ R = B^\top P,\ M \leftarrow B - (1-\mu)PR^\top,\
        Q \leftarrow \mathrm{colnorm}(R),\ W \leftarrow (1-\eta\lambda)W - \eta\, s(m, n)\, PQ^\top

    (:mod:`steepest.directions.dion`). Dion's momentum is not the EMA of the other optimizers:
    the gradient is added to ``M`` in full, and the error feedback removes the captured part.
    ``P``, ``R`` and ``Q`` are computed in float32 (float64 for float64 weights) whatever the
    weights' dtype; ``M`` has the weights' dtype, ``Q`` is kept in float32 (float64) and survives a
    bf16 resume. The first ``Q`` is a fixed Gaussian block with unit columns
    (:func:`~steepest.directions.dion.initial_basis`), so runs and ranks agree.

    Same-shape matrices are one batched call. Distributed (DDP, FSDP2), the matrix's owner runs the
    power iteration and sends ``P``, ``Q`` and ``R``'s column norms (``(m + n + 1)·r`` numbers)
    with the direction; every rank then applies the error feedback to its copy (or row shard) of
    ``M``, so the momentum itself never travels. On FSDP2 row shards the executor can instead run
    the power iteration on the shards with small collectives (:meth:`row_shard_direction`).

    Args:
        params: hidden-layer weights (≥ 2-D; conv weights are viewed as ``(out, in·kh·kw)``);
            give embeddings, the head and 1-D parameters to AdamW (:func:`steepest.build_optimizer`).
        lr: η (default 0.02, microsoft/dion's GPT setting and Muon's; on the digits MLP Dion's best
            rate was the same as Muon's, see the README).
        momentum: μ (default 0.95): the share of the captured part kept in ``M``.
        rank_fraction: ``r / min(m, n)`` (default 0.25; the paper's experiments use 1/4 and 1/16,
            microsoft/dion's default is 1, i.e. full rank).
        weight_decay: decoupled λ, ``W *= 1 − lr·λ`` (default 0).
        scale: ``s(m, n)`` as in :class:`~steepest.optim.Muon`: ``"original"`` (default,
            ``√max(1, m/n)``), ``"rms_to_rms"`` (``√(m/n)``, the paper's Algorithm 1) or
            ``"match_adamw"`` (``0.2·√max(m, n)``).
        nonfinite: ``"raise"`` (default), ``"skip"`` (the step leaves weights, ``M`` and ``Q``
            unchanged) or ``"ignore"``.
        compile: ``torch.compile(fullgraph=True)`` the power iteration (default False).
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 0.02,
        momentum: float = 0.95,
        rank_fraction: float = 0.25,
        weight_decay: float = 0.0,
        scale: str = "original",
        nonfinite: str = "raise",
        compile: bool = False,
        cautious_weight_decay: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, rank_fraction=rank_fraction, weight_decay=weight_decay, scale=scale,
            nonfinite=nonfinite, compile=compile, cautious_weight_decay=cautious_weight_decay,
        )  # fmt: skip
        super().__init__(params, defaults)

    def validate_group(self, group: dict) -> None:
        super().validate_group(group)
        what = " (the rank r as a share of min(m, n))"
        check_number("rank_fraction", group["rank_fraction"], high=1.0, what=what)
        if group["rank_fraction"] == 0:
            raise ValueError(f"rank_fraction must be a number in (0, 1]{what}, got 0")
        check_choice(group["scale"], "scale", SPECTRAL_SCALES)

    # --- the hooks of MatrixOptimizer --------------------------------------------------------
    def rank(self, group: dict, shape: tuple[int, int]) -> int:
        """Columns of ``Q`` for a matrix of ``shape``."""
        return dion_rank(shape, group["rank_fraction"])

    def lr_scale(self, group: dict, shape: tuple[int, int]) -> float:
        return spectral_scale(shape, group["scale"])

    def direction_flops(self, group: dict, shape: tuple[int, int]) -> float:
        """``B Q``, ``Bᵀ P`` and ``P Qᵀ`` (``2mnr`` each) and the QR of ``B Q`` (``≈ 4mr²``); the
        error feedback (``2mnr``) runs on every rank and is not split."""
        m, n = shape
        r = self.rank(group, shape)
        return float(6 * m * n * r + 4 * m * r * r)

    def update_momentum(self, group: dict, grads: list[Tensor], states: list[dict], skip: Tensor | None) -> list[Tensor]:
        """``B = M + G`` in place in the momentum buffers (the base class's EMA does not apply);
        on a skipped step the gradients are already zero."""
        bufs = [local_tensor(s["momentum_buffer"]) for s in states]
        torch._foreach_add_(bufs, grads)
        return bufs

    def direction_state(self, group: dict, bucket: Bucket) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        m, n = bucket.shape
        r = self.rank(group, bucket.shape)
        dtype = _precision(bucket.params[0].dtype)
        return {"dion_Q": ((n, r), dtype), "dion_P": ((m, r), dtype), "dion_norms": ((r,), dtype)}

    def direction_factors(self, group: dict, bucket: Bucket) -> tuple[int, torch.dtype]:
        """Always factored: ``P`` (``m × r``) and ``Q'`` (``n × r``) in the iteration's precision."""
        return self.rank(group, bucket.shape), _precision(bucket.params[0].dtype)

    def direction(self, group: dict, bucket: Bucket) -> Tensor | LowRank:
        return self._power_direction(group, bucket, bucket.stack(), LOCAL)

    def row_shard_direction(self, group: dict, bucket: Bucket):
        """On row shards: the power iteration with the rows' collectives (Ahn et al. 2025, §3)."""
        return lambda B, ops: self._power_direction(group, bucket, B, ops)

    def _power_direction(self, group: dict, bucket: Bucket, B: Tensor, ops: RowCollectives) -> LowRank:
        """The factors ``(P, Q')`` of ``P Q'ᵀ`` of ``B`` (``(k, m, n)``, or this rank's rows with
        row-split ``ops``, then ``P`` holds this rank's rows), in the iteration's precision (the step
        adds them as a rank-``r`` update; bf16 weights add it formed). ``Q``, ``P`` (whole columns:
        this rank's rows in place, zeros elsewhere) and norms go into the states."""
        previous = self.previous_basis(group, bucket, _precision(B.dtype), B.device)
        factors = self.math(group, power_step)(B, previous) if ops is LOCAL else power_step(B, previous, ops)
        D = LowRank(factors.P, factors.Q)
        if ops is not LOCAL:
            m, rows = bucket.shape[0], factors.P.shape[-2]
            P = factors.P.new_zeros(factors.P.shape[0], m, factors.P.shape[-1])
            P[:, ops.offset : ops.offset + rows] = factors.P  # directions_done reads each rank's rows
            factors = factors._replace(P=P)
        self.store_factors(bucket, previous, factors)
        return D

    def previous_basis(self, group: dict, bucket: Bucket, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The ``(k, n, r)`` stack of the matrices' ``Q`` (the fixed start where a matrix has none)."""
        n, r = bucket.shape[1], self.rank(group, bucket.shape)
        start = None
        previous = []
        for s in bucket.states:
            if "dion_Q" not in s:
                start = initial_basis(n, r, dtype=dtype, device=device) if start is None else start
            previous.append(s.get("dion_Q", start))
        return torch.stack(previous)

    def store_factors(self, bucket: Bucket, previous: Tensor, factors: DionFactors) -> None:
        """Keep the step's ``Q``, ``P`` and norms in the matrices' states (``P`` and the norms are
        consumed by :meth:`directions_done`); a skipped step changes neither ``M`` nor ``Q``."""
        if bucket.skip is not None:
            factors = factors._replace(norms=factors.norms.masked_fill(bucket.skip, 0))
        bucket.store_state("dion_Q", next_basis(previous, factors))
        bucket.store_state("dion_P", factors.P)
        bucket.store_state("dion_norms", factors.norms)

    def directions_done(self, group: dict, bucket: Bucket) -> None:
        """On every rank: ``M ← B − (1−μ)·P Rᵀ`` on this rank's copy or row shard of each momentum,
        from the ``P``, ``Q`` and norms of the matrix's owner; then ``P`` and the norms are dropped
        (``Q`` stays: it is the next step's start)."""
        mu = group["momentum"]
        P = bucket.stack_state("dion_P")
        Q = bucket.stack_state("dion_Q")
        norms = bucket.stack_state("dion_norms")
        m, n = bucket.shape
        momenta = bucket.momenta  # this rank's buffers (whole, or FSDP2 row shards): updated in place
        if all(M.numel() == m * n for M in momenta):
            new = error_feedback(torch.stack([bucket.matrix(M) for M in momenta]), P, Q, norms, mu).unbind(0)
        else:  # FSDP2 row shards (never transposed: such weights are refused): this rank's rows of P
            starts = [shard_row_start(p, m) for p in bucket.params]
            rows = [bucket.matrix(M) for M in momenta]
            new = [error_feedback(B, P[i, a : a + B.shape[0]], Q[i], norms[i], mu) for i, (a, B) in enumerate(zip(starts, rows))]
        for M, X in zip(momenta, new):
            bucket.write_matrix(M, X)  # a copy: a reshape of a channels_last buffer is not a view of it
        for s in bucket.states:
            del s["dion_P"], s["dion_norms"]

"""Neon's F* direction: a low-rank soft-thresholding of the singular values.

Two exact minimisers of ``⟨G, Δ⟩ + λ/2·‖Δ‖²`` (``G = UΣVᵀ``, verified in float64 by minimising
over the singular values, in the tests); the Neon seed is Kravatskiy, Kozyrev, Kozlov, Vinogradov,
Merkulov & Oseledets, *Neon: Nuclear Norm to Beat Muon* (MIPT optimization class project):

* ``variant="seed"`` — the Neon seed's eq. 3, ``D = U·diag([σᵢ − τ]₊)·Vᵀ`` with τ solving
  ``Σᵢ [σᵢ − τ]₊ = τ``. It is exact for the *squared-mean* norm ``‖Δ‖² = (‖Δ‖_*² + ‖Δ‖_F²)/2``,
  whose minimiser is ``−(2/λ)·D``: the seed drops a constant 2 into the learning rate.
* ``variant="mean_of_norms"`` — the exact minimiser for the norm the seed *names*,
  ``‖Δ‖ = (‖Δ‖_* + ‖Δ‖_F)/2``: ``D = k·U[Σ − c]₊Vᵀ`` with c solving ``c = ‖[σ − c]₊‖₂`` (an L2
  water-fill) and ``k = 4c/(Σ[σ − c]₊ + c)``; the minimiser is ``−D/λ``. It differs from the seed's
  form in direction, not only scale (σ = (5, 4, 3, 2, 1): τ = 3 with rank 2, c = 2.683 with rank 3).

Both thresholds are at least σ₁/2, so only singular values above σ₁/2 are active: the update is
low-rank, and the top ``r + 1`` singular values fix τ exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import check_choice, check_matrix, check_positive_int, compute_dtype
from ..execution import LowRank
from .collectives import LOCAL, RowCollectives
from .lowrank import Triplets, block_triplets, random_block, top_singular
from .nuclear import SIGMA_MODES

__all__ = [
    "fstar_direction",
    "fstar_threshold",
    "mean_of_norms_threshold",
    "soft_threshold_update",
    "fstar_block",
    "captured_part",
    "fstar_dense",
    "fstar_adaptive",
    "FSTAR_VARIANTS",
    "FSTAR_METHODS",
]

FSTAR_VARIANTS = ("seed", "mean_of_norms")
FSTAR_METHODS = ("svd", "lowrank")


def fstar_threshold(S: Tensor, *, with_rank: bool = False, check: bool = True) -> Tensor | tuple[Tensor, Tensor]:
    """The seed's τ: the root of ``Σᵢ [σᵢ − τ]₊ = τ``, exactly, batched over leading dims.

    With σ sorted descending and ``c_k = σ₁ + … + σ_k``, ``τ = c_r/(r + 1)`` for the unique ``r``
    with ``σ_r > c_r/(r + 1) ≥ σ_{r+1}``; the condition ``σ_k > c_k/(k+1)`` holds exactly for
    ``k ≤ r``, so ``r`` is a count. ``S`` may be in any order; ``τ = 0`` when all σ are 0.

    Returns:
        τ of shape ``S.shape[:-1]``, and with ``with_rank`` also ``r`` (int64), the update's rank.
        ``check=False`` skips the test for negative values (a host read).
    """
    S = _sorted_values(S, check)
    k = torch.arange(1, S.shape[-1] + 1, device=S.device, dtype=S.dtype)
    candidates = torch.cumsum(S, dim=-1) / (k + 1)
    rank = (S > candidates).sum(dim=-1)
    tau = torch.gather(candidates, -1, (rank - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    tau = torch.where(rank > 0, tau, torch.zeros_like(tau))
    return (tau, rank) if with_rank else tau


def mean_of_norms_threshold(S: Tensor, *, check: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """c solving ``c = ‖[σ − c]₊‖₂``, the scale ``k = 4c/(Σ[σ − c]₊ + c)`` and the rank.

    ``h(c) = ‖[σ − c]₊‖₂ − c`` decreases strictly from ``‖σ‖₂`` at 0 to ``−σ₁/2`` at σ₁, so its root
    is unique. Bisection (in float64, fixed iterations, no host sync) finds the active set of size
    ``r``; then ``c`` is the closed-form root of ``(r − 1)c² − 2s₁c + s₂ = 0`` (``s₁ = Σ_{i≤r} σᵢ``,
    ``s₂ = Σ_{i≤r} σᵢ²``; ``c = σ₁/2`` for ``r = 1``).
    """
    S = _sorted_values(S, check).to(torch.float64)
    lo = torch.zeros_like(S[..., 0])
    hi = S[..., 0].clone()
    for _ in range(64):
        mid = (lo + hi) / 2
        positive = torch.linalg.vector_norm((S - mid[..., None]).clamp(min=0), dim=-1) > mid
        lo = torch.where(positive, mid, lo)
        hi = torch.where(positive, hi, mid)
    rank = (S > hi[..., None]).sum(dim=-1).clamp(min=1)
    active = torch.arange(S.shape[-1], device=S.device) < rank[..., None]
    s1 = (S * active).sum(-1)
    s2 = (S.square() * active).sum(-1)
    r = rank.to(torch.float64)
    many = (s1 - torch.sqrt((s1.square() - (r - 1) * s2).clamp(min=0))) / (r - 1).clamp(min=1)
    c = torch.where(rank > 1, many, S[..., 0] / 2)
    total = (S - c[..., None]).clamp(min=0).sum(-1)
    scale = torch.where(c > 0, 4 * c / (total + c).clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(c))
    rank = torch.where(S[..., 0] > 0, rank, torch.zeros_like(rank))
    return c, scale, rank


def soft_threshold_update(triplets: Triplets, variant: str = "seed", sigma: str = "keep", factored: bool = False) -> tuple[Tensor | LowRank, Tensor]:
    """``D`` from (the top part of) an SVD, and the rank of ``D``.

    ``sigma="drop"`` divides ``D`` by its largest singular value (the analogue of the Neon
    authors' ``u₁v₁ᵀ``), so that ``‖D‖₂ = 1``. With ``factored``, ``D`` is returned as the factors
    :class:`~steepest.execution.LowRank` ``(U·diag(d), V)`` (``d`` zero past the rank), never formed.
    """
    U, S, V = triplets
    if variant == "seed":
        tau, rank = fstar_threshold(S, with_rank=True, check=False)
        d = (S - tau[..., None].to(S.dtype)).clamp(min=0)
    else:
        c, scale, rank = mean_of_norms_threshold(S, check=False)
        d = ((S - c[..., None].to(S.dtype)).clamp(min=0) * scale[..., None].to(S.dtype))
    if sigma == "drop":
        top = d[..., :1]
        d = torch.where(top > 0, d / top.clamp(min=torch.finfo(d.dtype).tiny), torch.zeros_like(d))
    left = U * d.unsqueeze(-2)
    return (LowRank(left, V) if factored else left @ V.mT), rank


def captured_part(triplets: Triplets, rank: Tensor) -> Tensor:
    """``U_r Σ_r V_rᵀ``: the part of ``M`` along the first ``rank`` singular triplets (per matrix),
    the low-rank part an update of rank ``r`` captures (error feedback removes it from the momentum)."""
    U, S, V = triplets
    keep = torch.arange(S.shape[-1], device=S.device) < rank.unsqueeze(-1)
    return (U * (S * keep).unsqueeze(-2)) @ V.mT


def fstar_block(
    M: Tensor, init: Tensor, iters: int, variant: str = "seed", sigma: str = "keep", capture: bool = False, ops: RowCollectives = LOCAL,
    factored: bool = False,
) -> tuple[Tensor | LowRank, Tensor, Tensor, Tensor | None]:
    """``(D, V, r, C)`` of a ``(k, m, n)`` batch from ``iters`` block power iterations started at
    ``init`` (``(k, n, l)``) and a Rayleigh–Ritz step: the soft-thresholded update of the top ``l``
    triplets, their right vectors ``V`` (``(k, n, l)``), the update's rank ``r`` (``(k,)``) and,
    with ``capture``, :func:`captured_part` (else ``None``). ``τ`` is exact when ``r < l`` and
    the top ``r + 1`` values have converged. No host read. With ``ops`` of row-split matrices
    (:mod:`~steepest.directions.collectives`), ``M``, ``D`` and ``C`` are this process's rows.
    ``factored``: ``D`` as its factors (:func:`soft_threshold_update`), ``l`` columns wide."""
    triplets = block_triplets(M, init, iters, ops)
    D, rank = soft_threshold_update(triplets, variant, sigma, factored)
    return D, triplets.V, rank, captured_part(triplets, rank) if capture else None


def fstar_dense(
    M: Tensor, variant: str = "seed", sigma: str = "keep", capture: bool = False, factored: bool = False
) -> tuple[Tensor | LowRank, Tensor, Tensor, Tensor | None]:
    """``(D, V, r, C)`` as :func:`fstar_block` but from a full SVD (``V`` has all ``min(m, n)``
    columns, and so have ``D``'s factors with ``factored``)."""
    U, S, Vh = torch.linalg.svd(M.to(compute_dtype(M.dtype)), full_matrices=False)
    triplets = Triplets(U, S, Vh.mT)
    D, rank = soft_threshold_update(triplets, variant, sigma, factored)
    return D, Vh.mT, rank, captured_part(triplets, rank) if capture else None


def fstar_adaptive(
    M: Tensor,
    init: Tensor,
    *,
    iters: int | None,
    grow_iters: int | None,
    oversample: int,
    max_width: int,
    variant: str = "seed",
    sigma: str = "keep",
    capture: bool = False,
    block_step: Callable = fstar_block,
    dense_step: Callable = fstar_dense,
    ops: RowCollectives = LOCAL,
    factored: bool = False,
) -> tuple[Tensor | LowRank, Tensor, Tensor, Tensor | None]:
    """F* of a ``(k, m, n)`` batch by a warm block iteration whose width follows each matrix's rank.

    Every matrix's update is the one computed at the first width ``w`` of ``l, 2l, 4l, …`` (``l =
    init.shape[-1]``, capped at ``max_width`` and ``min(m, n)``) that holds its rank ``r`` with
    ``oversample`` columns to spare, ``r + 1 + oversample ≤ w`` (or ``w = min(m, n)``). A matrix
    whose block would have to exceed ``max_width`` gets the dense SVD (:func:`fstar_dense`).
    A wider block starts from the narrower one's ``V`` padded with fixed random columns and runs
    ``grow_iters`` iterations; the first width runs ``iters``. A matrix's result depends only on
    itself, ``init`` and the widths, not on the other matrices of the batch.

    Returns ``(D, V, r, C)``: ``V`` holds the first ``l`` right singular vectors of each matrix's
    final block (``(k, n, l)``), ready to warm-start the next step; ``C`` is the
    :func:`captured_part` with ``capture`` (else ``None``). With ``factored``, ``D`` is a
    :class:`~steepest.execution.LowRank` as wide as the widest block used (a matrix's factors
    padded with zero columns past its own block).

    With ``ops`` of row-split matrices, ``M``, ``D`` and ``C`` are this process's rows, and the
    growth flags are OR-ed over the processes so that all decide alike (pass ``max_width ≥
    min(m, n)``: the dense SVD needs whole matrices).

    Host reads: one read of ``k`` flags per width tried (one per call when no rank outgrows
    ``l``; none when ``l ≥ min(m, n)``). ``block_step``/``dense_step`` may be compiled versions
    (``block_step`` is called with ``ops`` only when they are not :data:`LOCAL`).
    """
    width = init.shape[-1]
    full = min(ops.total_rows(M), M.shape[-1])
    M = M.to(compute_dtype(M.dtype))
    extra = ({} if ops is LOCAL else {"ops": ops}) | ({"factored": True} if factored else {})
    step = block_step if not extra else (lambda *a: block_step(*a, **extra))
    dense = dense_step if not factored else (lambda *a: dense_step(*a, factored=True))
    D, V, rank, C = step(M, init.to(M.dtype), iters, variant, sigma, capture)
    V = V.clone()
    w, todo, Vw, rw = width, None, V, rank  # todo: the batch indices still growing (None: all)
    while w < full:
        grow = ops.any(rw + 1 + oversample > w).tolist()  # the host read that decides growth
        pick = [i for i, g in enumerate(grow) if g]
        if not pick:
            break
        sel = torch.tensor(pick, device=M.device)
        todo = sel if todo is None else todo[sel]
        if w >= max_width:
            Dd, Vd, rd, Cd = dense(M[todo], variant, sigma, capture)
            D = _put(D, todo, Dd)
            V[todo], rank[todo] = Vd[..., :width].to(V.dtype), rd
            if capture:
                C[todo] = Cd.to(C.dtype)
            break
        w = min(2 * w, max_width, full)
        Dw, Vw, rw, Cw = step(M[todo], padded_block(Vw[sel], w), grow_iters, variant, sigma, capture)
        D = _put(D, todo, Dw)
        V[todo], rank[todo] = Vw[..., :width], rw
        if capture:
            C[todo] = Cw
    return D, V, rank, C


def _put(D: Tensor | LowRank, index: Tensor, part: Tensor | LowRank) -> Tensor | LowRank:
    """``D`` with the matrices at ``index`` replaced by ``part``; factors are widened with zero
    columns to the wider of the two (a zero column adds nothing to ``left·rightᵀ``)."""
    if not isinstance(D, LowRank):
        D[index] = part.to(D.dtype)
        return D
    width = max(D.left.shape[-1], part.left.shape[-1])
    widen = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[-1]))  # noqa: E731
    left, right = widen(D.left), widen(D.right)
    left[index], right[index] = widen(part.left).to(left.dtype), widen(part.right).to(right.dtype)
    return LowRank(left, right)


def padded_block(Q: Tensor, width: int) -> Tensor:
    """``Q`` (``(k, n, j)``) with fixed random columns appended up to ``width``."""
    extra = random_block(Q.shape[:-2], Q.shape[-2], width - Q.shape[-1], dtype=Q.dtype, device=Q.device)
    return torch.cat([Q, extra], dim=-1)


def fstar_direction(
    G: Tensor,
    *,
    variant: str = "seed",
    sigma: str = "keep",
    method: str = "svd",
    rank: int | None = None,
    init: Tensor | None = None,
    iters: int | None = None,
    tol: float | None = 1e-5,
    check_finite: bool = True,
) -> Tensor:
    """Neon's F* update ``D`` (the optimizer steps ``W ← W − lr·D``); see the module docstring.

    Args:
        G: ``(..., m, n)``.
        variant: ``"seed"`` (default, ``U[Σ−τ]₊Vᵀ``) or ``"mean_of_norms"``.
        sigma: ``"keep"`` (the formula) or ``"drop"`` (normalise ``D`` to spectral norm 1).
        method: ``"svd"`` (dense, exact) or ``"lowrank"``: top-``rank + 1`` triplets by block power
            iteration (:func:`~steepest.directions.top_singular`, warm-startable from ``init``),
            doubling the block until the threshold is exact (the computed values reach below it;
            one host sync per doubling).
        rank: first guess of the update's rank for ``"lowrank"`` (default 8).
        tol: residual tolerance of the ``"lowrank"`` iteration (see ``top_singular``); ``None`` runs
            a fixed ``iters`` with no host sync.

    Returns:
        A tensor of ``G``'s shape and dtype, of low rank; zero for ``G = 0``.
    """
    check_matrix(G, "G", check_finite=check_finite)
    check_choice(variant, "variant", FSTAR_VARIANTS)
    check_choice(sigma, "sigma", SIGMA_MODES)
    check_choice(method, "method", FSTAR_METHODS)
    if method == "svd":
        U, S, Vh = torch.linalg.svd(G.to(compute_dtype(G.dtype)), full_matrices=False)
        D, _ = soft_threshold_update(Triplets(U, S, Vh.mT), variant, sigma)
        return D.to(G.dtype)
    k = 8 if rank is None else rank
    check_positive_int(k, "rank")
    A = G.reshape(-1, *G.shape[-2:])
    k = min(k + 1, *A.shape[-2:])

    def block_step(M: Tensor, start: Tensor, iters: int | None, variant: str, sigma: str, capture: bool):
        triplets = top_singular(M, start.shape[-1], init=start, iters=iters, tol=tol, check_finite=False)
        D, r = soft_threshold_update(triplets, variant, sigma)
        return D, triplets.V, r, None

    D, _, _, _ = fstar_adaptive(
        A, _first_block(A, k, init), iters=(4 if init is None else 1) if iters is None else iters, grow_iters=iters,
        oversample=0, max_width=min(A.shape[-2:]), variant=variant, sigma=sigma, block_step=block_step,
    )  # fmt: skip
    return D.reshape(G.shape).to(G.dtype)


def _first_block(A: Tensor, k: int, init: Tensor | None) -> Tensor:
    """The ``(b, n, k)`` start of :func:`fstar_direction`'s iteration: ``init`` (``(..., n, j)``,
    broadcast over ``A``'s batch) cut to ``k`` columns or padded with fixed random ones."""
    n, dtype = A.shape[-1], compute_dtype(A.dtype)
    if init is None:
        return random_block(A.shape[:-2], n, k, dtype=dtype, device=A.device)
    if not isinstance(init, Tensor) or init.ndim < 2 or init.shape[-2] != n:
        shape = tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__
        raise ValueError(f"init must have shape (..., n={n}, j) to match G, got {shape}")
    block = init.to(device=A.device, dtype=dtype).reshape(-1, *init.shape[-2:]).expand(A.shape[0], *init.shape[-2:])
    return block[..., :k] if block.shape[-1] >= k else padded_block(block, k)


def _sorted_values(S: Tensor, check: bool = True) -> Tensor:
    if not isinstance(S, Tensor) or S.ndim < 1 or not S.is_floating_point():
        raise ValueError(f"S must be a floating tensor of singular values (..., k), got {S!r:.80}")
    if check and S.numel() and bool((S < 0).any()):
        raise ValueError("S must hold singular values (>= 0); got negative entries")
    return torch.sort(S, dim=-1, descending=True).values

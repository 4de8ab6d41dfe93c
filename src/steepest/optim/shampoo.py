"""Shampoo: two-sided preconditioning with accumulated gradient statistics (Gupta et al. 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..directions.shampoo import block_inverse_root, block_partition, block_preconditioned, block_statistics
from ..validation import check_choice, check_int
from .base import Bucket, MatrixOptimizer, check_hyperparameter
from .registry import Registration, register

__all__ = ["Shampoo", "MAX_PRECONDITIONER_DIM"]

GRAFTING = ("adam", "none")
# The cap (Distributed Shampoo's default too): eigh costs ~d³, and blocked statistics cost m·n·b
# instead of m·n·(m + n) (timings in docs/performance.md, "Figures behind the code's constants").
MAX_PRECONDITIONER_DIM = 1024


@register(Registration("shampoo", "Shampoo: L^-1/4 G R^-1/4 with accumulated statistics, grafted to Adam's norm", 1e-3, color="#e69f00"))
class Shampoo(MatrixOptimizer):
    r"""``W ← (1 − ηλ)W − η·g·L^{-1/4} M R^{-1/4}`` (:mod:`steepest.directions.shampoo`).

    * ``L ← β₂L + GGᵀ``, ``R ← β₂R + GᵀG`` from the raw gradient every step (``beta2 = 1``: the
      seed's plain sums; ``< 1``: an EMA with weight ``1 − β₂`` on the new term), kept in float32
      (float64 for float64 parameters) whatever the parameter dtype;
    * a side longer than ``max_preconditioner_dim`` (default 1024) is cut into nearly equal blocks
      of at most that size (:func:`~steepest.directions.shampoo.block_partition`), and ``L``, ``R``
      are replaced by their block-diagonal parts: a ``512×4608`` conv weight keeps one ``512²``
      ``L`` and five ``922²`` blocks of ``R`` instead of a ``4608²`` ``R``, a ``1×12480`` weight
      thirteen ``960²`` blocks. State ``L``: ``(k_r, b_r, b_r)``, ``R``: ``(k_c, b_c, b_c)``.
      ``None``: no cap (one block, an ``eigh`` of the full side);
    * the inverse fourth roots of ``L + εI``, ``R + εI`` are recomputed every ``update_every`` steps
      of each matrix (counted by its own ``step``; a matrix without roots gets them on its first
      step) by a batched ``eigh`` in float32, redone in float64 for the blocks whose condition
      ``(λ_max + ε)/(λ_min + ε)`` exceeds 1e4 (``ε = 0``: or that reach float32's pseudo-inverse
      cutoff) or whose float32 ``eigh`` does not converge (one host
      read on those steps only; :func:`~steepest.directions.shampoo.inverse_root`), and reused in
      between. With ``ε > 0`` every eigenvalue maps to ``(λ + ε)^{-1/4}``; ``ε = 0`` gives
      pseudo-inverse roots;
    * ``M`` is the (Nesterov) EMA momentum of ``G``, preconditioned every step;
    * ``grafting="adam"`` (default) rescales each matrix's direction to the Frobenius norm of
      Adam's bias-corrected direction ``M̂/(√(v/(1−β₂ᵗ)) + ε)`` with ``M̂ = M/(1 − μᵗ)``
      (``1 − μ^{t+1}`` with Nesterov: the total weight of the gradients in ``M``), so the learning
      rate is on Adam's scale from the first step (Agarwal et al. 2020; Distributed Shampoo
      bias-corrects the same way); at step 1 the update's norm equals ``torch.optim.Adam``'s.
      ``"none"`` keeps the raw direction (its size shrinks as the statistics grow, like AdaGrad's);
      between refreshes each block's reused roots are scaled by ``(tr S_then / tr S_now)^{1/4}``,
      so that a root of small early statistics does not blow up the steps that follow.

    Without accumulation (one step, ε → 0, no blocking) the direction is ``U_r V_rᵀ``: Shampoo is
    Muon with memory (lecture seed). Memory: per weight ``2(k_r b_r² + k_c b_c²)`` numbers (the
    statistics and their roots) plus Adam's ``v``.

    Args:
        lr: η (default 1e-3). momentum (0.9), nesterov (True), weight_decay, nonfinite: as in Muon.
        beta2: statistics decay (default 1.0). eps: ridge ε (default 1e-12).
        update_every: steps between root refreshes (default 10).
        max_preconditioner_dim: largest block side (default 1024), or ``None``.
        grafting: ``"adam"`` or ``"none"``. graft_beta2 (0.999), graft_eps (1e-8): Adam's.
        compile: ``torch.compile(fullgraph=True)`` the per-step preconditioning (default False).
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        beta2: float = 1.0,
        eps: float = 1e-12,
        update_every: int = 10,
        max_preconditioner_dim: int | None = MAX_PRECONDITIONER_DIM,
        grafting: str = "adam",
        graft_beta2: float = 0.999,
        graft_eps: float = 1e-8,
        nonfinite: str = "raise",
        compile: bool = False,
        cautious_weight_decay: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, beta2=beta2, eps=eps,
            update_every=update_every, max_preconditioner_dim=max_preconditioner_dim, grafting=grafting,
            graft_beta2=graft_beta2, graft_eps=graft_eps, nonfinite=nonfinite, compile=compile, cautious_weight_decay=cautious_weight_decay,
        )
        super().__init__(params, defaults)

    def validate_group(self, group: dict) -> None:
        super().validate_group(group)
        check_hyperparameter("beta2", group["beta2"], high=1.0)
        check_hyperparameter("graft_beta2", group["graft_beta2"], high=1.0, high_open=True)
        check_hyperparameter("eps", group["eps"])
        check_hyperparameter("graft_eps", group["graft_eps"])
        check_choice(group["grafting"], "grafting", GRAFTING)
        check_int(group["update_every"], "update_every")
        check_int(group["max_preconditioner_dim"], "max_preconditioner_dim", none="no blocking")

    def _blocks(self, group: dict, shape: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        m, n = shape
        cap = group.get("max_preconditioner_dim", MAX_PRECONDITIONER_DIM)
        return block_partition(m, cap), block_partition(n, cap)

    def direction_flops(self, group: dict, shape: tuple[int, int]) -> float:
        """Per step: the statistics ``GGᵀ``, ``GᵀG`` and the two preconditioner products, blockwise
        (``2mn(b_L + b_R)`` each), plus the amortised ``eigh`` of every block (``≈ 9b³`` per block,
        every ``update_every`` steps); used to balance the distributed split."""
        (kl, bl), (kr, br) = self._blocks(group, shape)
        m, n = shape
        eigh = 9.0 * (kl * bl**3 + kr * br**3) / group["update_every"]
        return float(4 * m * n * (bl + br) + eigh)

    prepares_with_gradients = True  # the statistics L += GGᵀ, R += GᵀG need whole gradients

    def prepare_directions(self, group: dict, bucket: Bucket) -> None:
        """The statistics, from the raw gradients: ``L``, ``R`` (block-diagonal parts) and Adam's
        ``v`` and step count for grafting. Each matrix's state is created on its own first step (a
        matrix may join a bucket whose other members have statistics). Under DDP every rank updates
        them (the gradients are replicated) and only the roots and the preconditioning are split,
        so the statistics never travel."""
        dtype = torch.float64 if bucket.grads[0].dtype == torch.float64 else torch.float32
        Gc = bucket.stack(bucket.grads, dtype=dtype)
        (kr, br), (kc, bc) = rows, cols = self._blocks(group, bucket.shape)
        adam = group["grafting"] == "adam"
        for s, name in zip(bucket.states, bucket.names):
            if "L" not in s:
                s["L"] = torch.zeros(kr, br, br, dtype=dtype, device=Gc.device)
                s["R"] = torch.zeros(kc, bc, bc, dtype=dtype, device=Gc.device)
            elif s["L"].shape != (kr, br, br) or s["R"].shape != (kc, bc, bc):
                raise ValueError(
                    f"Shampoo state of parameter {name} has statistics L {tuple(s['L'].shape)}, R {tuple(s['R'].shape)}, "
                    f"but max_preconditioner_dim={group.get('max_preconditioner_dim', MAX_PRECONDITIONER_DIM)} gives {(kr, br, br)}, {(kc, bc, bc)}; "
                    "resume with the max_preconditioner_dim the checkpoint was saved with"
                )
            if adam and "graft_v" not in s:
                s["graft_v"] = torch.zeros(bucket.shape, dtype=dtype, device=Gc.device)
                s["graft_t"] = torch.zeros((), dtype=dtype, device=Gc.device)  # on the device: no copy per step
        L, R = block_statistics(Gc, rows, cols)
        beta2 = group["beta2"]
        new = 1.0 if beta2 == 1.0 else 1.0 - beta2
        bucket.store_state("L", bucket.stack_state("L") * beta2 + new * L)
        bucket.store_state("R", bucket.stack_state("R") * beta2 + new * R)
        if adam:
            b2 = group["graft_beta2"]
            bucket.store_state("graft_v", bucket.stack_state("graft_v").mul_(b2).addcmul_(Gc, Gc, value=1 - b2))
            bucket.store_state("graft_t", bucket.stack_state("graft_t") + 1)

    @staticmethod
    def _stale(group: dict, state: dict) -> bool:
        """Whether this matrix's roots are recomputed on this step (its own step count)."""
        return "L_root" not in state or int(state["step"]) % group["update_every"] == 0

    def direction_state(self, group: dict, bucket: Bucket) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        if not any(self._stale(group, s) for s in bucket.states):
            return {}
        L, R = bucket.states[0]["L"], bucket.states[0]["R"]
        return {"L_root": (tuple(L.shape), L.dtype), "R_root": (tuple(R.shape), R.dtype),
                "L_root_trace": (tuple(L.shape[:1]), L.dtype), "R_root_trace": (tuple(R.shape[:1]), R.dtype)}

    def _refresh_roots(self, group: dict, bucket: Bucket, stale: list[dict]) -> None:
        """The roots of the stale matrices' statistics, in one batch, and the statistics' traces they
        were computed from (per block); statistics that overflowed are an error naming the matrix."""
        m, n = bucket.shape
        out = {}
        for key, d in (("L", m), ("R", n)):
            stats = torch.stack([s[key] for s in stale])
            finite = torch.isfinite(stats).flatten(1).all(dim=1)
            if not bool(finite.all()):  # refresh steps already read a flag back (inverse_root)
                name = bucket.names[bucket.states.index(stale[int((~finite).nonzero()[0, 0])])]
                raise ValueError(
                    f"Shampoo: the statistics of parameter {name} overflowed {stats.dtype} (gradient entries near 1e19 or above); "
                    "scale the loss down, or clip gradients"
                )
            out[key + "_root"] = block_inverse_root(stats, d, 4, group["eps"])
            out[key + "_root_trace"] = torch.diagonal(stats, dim1=-2, dim2=-1).sum(-1)
        for key in ("L_root", "R_root", "L_root_trace", "R_root_trace"):  # direction_state's order, as other ranks store them
            for s, value in zip(stale, out[key].unbind(0)):
                s[key] = value

    @staticmethod
    def _staleness(bucket: Bucket, key: str) -> Tensor:
        """``(tr(S_then)/tr(S_now))^{1/4}`` per block, ``S`` the statistic ``key``: the factor by which
        a root computed ``update_every`` steps ago overestimates the current one when ``S`` grew
        uniformly (exact then; 1 for roots from before this was kept)."""
        now = torch.diagonal(bucket.stack_state(key), dim1=-2, dim2=-1).sum(-1)
        then = torch.stack([s[key + "_root_trace"] if key + "_root_trace" in s else torch.diagonal(s[key], dim1=-2, dim2=-1).sum(-1)
                            for s in bucket.states])
        return torch.where(now > 0, (then / now.clamp(min=torch.finfo(now.dtype).tiny)).clamp(max=1.0), torch.ones_like(now)) ** 0.25

    def direction(self, group: dict, bucket: Bucket) -> Tensor:
        """``g·L^{-1/4} M R^{-1/4}`` (blockwise) from the statistics of :meth:`prepare_directions`;
        the roots of the matrices due for a refresh are recomputed first, in one batch."""
        stale = [s for s in bucket.states if self._stale(group, s)]
        if stale:
            self._refresh_roots(group, bucket, stale)
        M = bucket.stack(dtype=bucket.states[0]["L"].dtype)
        L_root, R_root = bucket.stack_state("L_root"), bucket.stack_state("R_root")
        if group["grafting"] == "none":  # nothing else bounds a step from roots of smaller statistics
            L_root = L_root * self._staleness(bucket, "L")[..., None, None]
            R_root = R_root * self._staleness(bucket, "R")[..., None, None]
        if group["grafting"] == "adam":
            D = self.math(group, grafted_step)(
                L_root, M, R_root, bucket.stack_state("graft_v"), bucket.stack_state("graft_t"),
                group["graft_beta2"], group["graft_eps"], group["momentum"], group["nesterov"],
            )
        else:
            D = self.math(group, block_preconditioned)(L_root, M, R_root)
        return D.to(bucket.momenta[0].dtype)


def grafted_step(
    L_root: Tensor, M: Tensor, R_root: Tensor, v: Tensor, t: Tensor, beta2: float, eps: float, momentum: float, nesterov: bool
) -> Tensor:
    """Shampoo's (blocked) direction rescaled to the Frobenius norm of Adam's bias-corrected
    ``M̂/(√(v/(1−β₂ᵗ)) + ε)``, ``M̂ = M/(1 − μ^{t+[nesterov]})`` (``t``: the matrix's step count)."""
    D = block_preconditioned(L_root, M, R_root)
    t = t[:, None, None]
    m_hat = M / (1 - momentum ** (t + 1)) if nesterov else M / (1 - momentum**t)
    adam = m_hat / ((v / (1 - beta2**t)).sqrt() + eps)
    norm_d = torch.linalg.vector_norm(D, dim=(-2, -1), keepdim=True)
    norm_a = torch.linalg.vector_norm(adam, dim=(-2, -1), keepdim=True)
    scale = torch.where(norm_d > 0, norm_a / norm_d.clamp(min=torch.finfo(D.dtype).tiny), torch.zeros_like(norm_d))
    return D * scale

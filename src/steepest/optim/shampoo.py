"""Shampoo: two-sided preconditioning with accumulated gradient statistics (Gupta et al. 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Bucket, MatrixOptimizer, check_hyperparameter

__all__ = ["Shampoo"]

GRAFTING = ("adam", "none")
FLOAT32_CONDITION_LIMIT = 1e6  # beyond it a float32 eigh loses the small eigenvalues' roots


class Shampoo(MatrixOptimizer):
    r"""``W ← (1 − ηλ)W − η·g·L^{-1/4} M R^{-1/4}`` (:func:`steepest.directions.shampoo_direction`).

    * ``L ← β₂L + GGᵀ``, ``R ← β₂R + GᵀG`` from the raw gradient every step (``beta2 = 1``: the
      seed's plain sums; ``< 1``: an EMA with weight ``1 − β₂`` on the new term);
    * the inverse fourth roots of ``L + εI``, ``R + εI`` are recomputed every ``update_every``
      steps by a batched ``eigh`` in float32, redone in float64 for the matrices whose
      ``(λ_max + ε)/(λ_min + ε)`` exceeds 1e6 (one host read on those steps only), and reused
      in between;
    * ``M`` is the (Nesterov) EMA momentum of ``G``, preconditioned every step;
    * ``grafting="adam"`` (default) rescales each matrix's direction to the Frobenius norm of
      Adam's direction ``M/(√(v/(1−β^t)) + ε)`` (Agarwal et al. 2020; Distributed Shampoo), so the
      learning rate is on Adam's scale; ``"none"`` keeps the raw direction (its size shrinks as
      the statistics grow, like AdaGrad's).

    Without accumulation (one step, ε → 0) the direction is ``U_r V_rᵀ``: Shampoo is Muon with
    memory (lecture seed). Memory: an ``m×m`` and an ``n×n`` matrix per weight, plus their roots.

    Args:
        lr: η (default 1e-3). momentum (0.9), nesterov (True), weight_decay, nonfinite: as in Muon.
        beta2: statistics decay (default 1.0). eps: ridge ε (default 1e-12).
        update_every: steps between root refreshes (default 10).
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
        grafting: str = "adam",
        graft_beta2: float = 0.999,
        graft_eps: float = 1e-8,
        nonfinite: str = "raise",
        compile: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, beta2=beta2, eps=eps,
            update_every=update_every, grafting=grafting, graft_beta2=graft_beta2, graft_eps=graft_eps, nonfinite=nonfinite,
            compile=compile,
        )
        super().__init__(params, defaults)

    def validate_group(self, group: dict) -> None:
        super().validate_group(group)
        check_hyperparameter("beta2", group["beta2"], high=1.0)
        check_hyperparameter("graft_beta2", group["graft_beta2"], high=1.0, high_open=True)
        check_hyperparameter("eps", group["eps"])
        check_hyperparameter("graft_eps", group["graft_eps"])
        if group["grafting"] not in GRAFTING:
            raise ValueError(f"unknown grafting {group['grafting']!r}; accepted values: {', '.join(map(repr, GRAFTING))}")
        v = group["update_every"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"update_every must be an integer >= 1, got {v!r}")

    def prepare_directions(self, group: dict, bucket: Bucket) -> None:
        """The statistics, from the raw gradients: ``L``, ``R`` and Adam's ``v`` for grafting.
        Under DDP every rank updates them (the gradients are replicated) and only the roots and
        the preconditioning are split, so the statistics never travel."""
        G = bucket.stack(bucket.grads)
        m, n = bucket.shape
        dtype = torch.float64 if G.dtype == torch.float64 else torch.float32
        Gc = G.to(dtype)
        if "L" not in bucket.states[0]:
            for s in bucket.states:
                s["L"] = torch.zeros(m, m, dtype=dtype, device=G.device)
                s["R"] = torch.zeros(n, n, dtype=dtype, device=G.device)
                if group["grafting"] == "adam":
                    s["graft_v"] = torch.zeros(m, n, dtype=dtype, device=G.device)
                    s["graft_t"] = torch.zeros((), dtype=dtype, device=G.device)  # on the device: no copy per step
        beta2 = group["beta2"]
        new = 1.0 if beta2 == 1.0 else 1.0 - beta2
        bucket.store_state("L", bucket.stack_state("L") * beta2 + new * (Gc @ Gc.mT))
        bucket.store_state("R", bucket.stack_state("R") * beta2 + new * (Gc.mT @ Gc))
        if group["grafting"] == "adam":
            b2 = group["graft_beta2"]
            bucket.store_state("graft_v", bucket.stack_state("graft_v").mul_(b2).addcmul_(Gc, Gc, value=1 - b2))
            bucket.store_state("graft_t", bucket.stack_state("graft_t") + 1)

    def _refresh_roots(self, group: dict, bucket: Bucket) -> bool:
        return int(bucket.states[0]["step"]) % group["update_every"] == 0 or "L_root" not in bucket.states[0]

    def direction_flops(self, group: dict, shape: tuple[int, int]) -> float:
        """``2mn(m + n)`` per step plus the ``eigh`` (``≈ 10(m³ + n³)``) every ``update_every``
        steps; used to balance the distributed split."""
        m, n = shape
        return float(2 * m * n * (m + n) + 10 * (m**3 + n**3) / group["update_every"])

    def direction_state(self, group: dict, bucket: Bucket) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        if not self._refresh_roots(group, bucket):
            return {}
        m, n = bucket.shape
        dtype = bucket.states[0]["L"].dtype
        return {"L_root": ((m, m), dtype), "R_root": ((n, n), dtype)}

    def direction(self, group: dict, bucket: Bucket) -> Tensor:
        """``g·L^{-1/4} M R^{-1/4}`` from the statistics of :meth:`prepare_directions`."""
        if self._refresh_roots(group, bucket.whole):
            bucket.store_state("L_root", _inverse_fourth_root(bucket.stack_state("L"), group["eps"]))
            bucket.store_state("R_root", _inverse_fourth_root(bucket.stack_state("R"), group["eps"]))
        M0 = bucket.stack()
        M = M0.to(bucket.states[0]["L"].dtype)
        if group["grafting"] == "adam":
            D = self.math(group, grafted_step)(
                bucket.stack_state("L_root"), M, bucket.stack_state("R_root"), bucket.stack_state("graft_v"),
                bucket.stack_state("graft_t"), group["graft_beta2"], group["graft_eps"],
            )
        else:
            D = self.math(group, preconditioned)(bucket.stack_state("L_root"), M, bucket.stack_state("R_root"))
        return D.to(M0.dtype)


def preconditioned(L_root: Tensor, M: Tensor, R_root: Tensor) -> Tensor:
    """``L^{-1/4} M R^{-1/4}`` for a batch."""
    return L_root @ M @ R_root


def grafted_step(L_root: Tensor, M: Tensor, R_root: Tensor, v: Tensor, t: Tensor, beta2: float, eps: float) -> Tensor:
    """Shampoo's direction rescaled to the Frobenius norm of Adam's ``M/(√(v/(1−β₂ᵗ)) + ε)``."""
    D = L_root @ M @ R_root
    adam = M / ((v / (1 - beta2 ** t[:, None, None])).sqrt() + eps)
    norm_d = torch.linalg.vector_norm(D, dim=(-2, -1), keepdim=True)
    norm_a = torch.linalg.vector_norm(adam, dim=(-2, -1), keepdim=True)
    scale = torch.where(norm_d > 0, norm_a / norm_d.clamp(min=torch.finfo(D.dtype).tiny), torch.zeros_like(norm_d))
    return D * scale


def _inverse_fourth_root(A: Tensor, eps: float) -> Tensor:
    """``(A + εI)^{-1/4}`` by batched eigh; float64 for the matrices whose float32 eigenvalues are
    too coarse. Each matrix's root is independent of the others in the batch (so a rank computing
    a share of the batch gets the single-process numbers)."""
    if A.dtype == torch.float64:
        return _root_from_eigh(*torch.linalg.eigh(A), eps)
    lam, Q = torch.linalg.eigh(A.to(torch.float32))
    root = _root_from_eigh(lam, Q, eps)
    lam = lam.clamp(min=0)
    coarse = (lam[..., -1] + eps) / (lam[..., 0] + eps) > FLOAT32_CONDITION_LIMIT
    if bool(coarse.any()):
        root[coarse] = _root_from_eigh(*torch.linalg.eigh(A[coarse].to(torch.float64)), eps).to(root.dtype)
    return root.to(A.dtype)


def _root_from_eigh(lam: Tensor, Q: Tensor, eps: float) -> Tensor:
    lam = lam.clamp(min=0) + eps
    cutoff = lam.shape[-1] * torch.finfo(lam.dtype).eps * lam[..., -1:]
    root = torch.where(lam > cutoff, lam.clamp(min=torch.finfo(lam.dtype).tiny) ** -0.25, torch.zeros_like(lam))
    return (Q * root.unsqueeze(-2)) @ Q.mT

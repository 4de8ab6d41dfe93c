"""Sign descent with momentum: steepest descent under the ℓ1→ℓ∞ norm (the modular seed)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Bucket, MatrixOptimizer
from .registry import Registration, register

__all__ = ["SignDescent"]


@register(Registration("sign", "Sign descent with momentum: l1->linf steepest descent (Adam without EMA)", 1e-3, color="#56b4e9"))
class SignDescent(MatrixOptimizer):
    r"""``W ← (1 − ηλ)W − η·sign(M)``, ``M`` the (Nesterov) EMA momentum as in :class:`Muon`.

    Per matrix this is steepest descent under the max-entry (ℓ1→ℓ∞) norm, whose exact minimiser
    ``−‖G‖₁·sign(G)/λ`` it keeps without the dual norm (Adam with β1 = β2 = 0 and momentum; cf.
    signSGD, Lion). Accepts parameters of any shape.

    Args: as :class:`Muon`'s ``lr`` (default 1e-3), ``momentum`` (0.9), ``nesterov``,
    ``weight_decay``, ``nonfinite``, ``compile``.
    """

    min_ndim = 1
    elementwise = True  # a shard's direction is the direction's shard: no need to split or gather

    def __init__(self, params, lr: float | Tensor = 1e-3, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0, nonfinite: str = "raise", compile: bool = False, cautious_weight_decay: bool = False) -> None:
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, nonfinite=nonfinite, compile=compile, cautious_weight_decay=cautious_weight_decay)
        super().__init__(params, defaults)

    def direction_flops(self, group: dict, shape: tuple[int, int]) -> float:
        """``m·n``: one operation per entry (computed where the data is, never split)."""
        return float(shape[0] * shape[1])

    def direction(self, group: dict, bucket: Bucket) -> Tensor:
        return self.math(group, torch.sign)(bucket.stack())

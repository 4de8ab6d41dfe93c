"""NorMuon: Muon's orthogonalised momentum with per-row second-moment normalisation."""

from __future__ import annotations

import torch
from torch import Tensor

from ..directions._checks import compute_dtype
from ..directions.normuon import NORMUON_BETA2, NORMUON_EPS, row_normalized
from .base import Bucket, MatrixOptimizer, check_hyperparameter
from .muon import Muon
from .registry import Registration, register

__all__ = ["NorMuon"]


@register(Registration(
    "normuon", "NorMuon: Muon's msgn(M) with its rows divided by an EMA of their RMS (Li et al. 2025; modded-nanogpt #41)", 0.02,
    family="spectral", color="#b2182b",
))  # fmt: skip
class NorMuon(Muon):
    r"""NorMuon (Li et al. 2025, arXiv 2510.05491): Muon whose orthogonalised update has its rows
    normalised by an EMA of their mean square, then rescaled to the same Frobenius norm.

    .. math::
        U = \mathrm{msgn}(M_t),\quad v \leftarrow \beta_2 v + (1-\beta_2)\,\mathrm{mean}_j U_{ij}^2,\quad
        \hat U = \frac{U}{\sqrt v + \epsilon}\cdot\frac{\|U\|_F}{\|U/(\sqrt v + \epsilon)\|_F},\\
        W_t = (1 - \eta\lambda) W_{t-1} - \eta\, s(m, n)\, \hat U

    (:func:`steepest.directions.normuon.row_normalized`), with ``M_t`` Muon's (Nesterov) momentum
    and ``s`` Muon's shape scale. Rows are the ``(out, in)`` matrix's output rows (a conv weight's
    filters; HF ``Conv1D`` weights are seen transposed). ``v`` (one number per row) starts at zero,
    is kept in float32 (float64 for float64 weights) whatever the weights' dtype, and is not
    updated on a step skipped for non-finite gradients.

    Args:
        beta2: β₂ of the row EMA (default 0.95, microsoft/dion's; modded-nanogpt uses 0.9).
        eps: ε added to ``√v`` (default 1e-8).
        All other arguments as :class:`~steepest.optim.Muon` (lr default 0.02).
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        beta2: float = NORMUON_BETA2,
        eps: float = NORMUON_EPS,
        msgn_method: str = "polar_express",
        ns_steps: int = 5,
        scale: str = "original",
        msgn_dtype: torch.dtype | None = None,
        nonfinite: str = "raise",
        compile: bool = False,
        cautious_weight_decay: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, beta2=beta2, eps=eps, msgn_method=msgn_method,
            ns_steps=ns_steps, scale=scale, msgn_dtype=msgn_dtype, nonfinite=nonfinite, compile=compile,
            cautious_weight_decay=cautious_weight_decay,
        )  # fmt: skip
        MatrixOptimizer.__init__(self, params, defaults)

    def validate_group(self, group: dict) -> None:
        super().validate_group(group)
        check_hyperparameter("beta2", group["beta2"], high=1.0, high_open=True)
        check_hyperparameter("eps", group["eps"])

    def direction_state(self, group: dict, bucket: Bucket) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"row_second_moment": ((bucket.shape[0],), compute_dtype(bucket.params[0].dtype))}

    def direction(self, group: dict, bucket: Bucket) -> Tensor:
        U = super().direction(group, bucket)
        dtype = compute_dtype(bucket.params[0].dtype)
        previous = torch.stack([s.get("row_second_moment", U.new_zeros(bucket.shape[0], dtype=dtype)).to(U.device, dtype) for s in bucket.states])
        D, v = self.math(group, row_normalized)(U, previous, group["beta2"], group["eps"], check=False)
        if bucket.skip is not None:
            v = torch.where(bucket.skip, previous, v)
        bucket.store_state("row_second_moment", v.to(dtype))
        return D

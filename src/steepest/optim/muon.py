"""Muon: momentum, orthogonalised (Jordan et al. 2024; the Muon and modular seeds)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..directions.msgn import MSGN_METHODS, cast_keeps_range, default_iteration_dtype, msgn, msgn_polynomial
from ..directions.spectral import SPECTRAL_SCALES, spectral_scale
from ..validation import check_choice, check_int
from .base import Bucket, MatrixOptimizer
from .registry import Registration, register

__all__ = ["Muon"]

# On a CPU, matrices whose smaller side is at least this are orthogonalised one at a time into kept
# buffers when the iteration runs in bf16/fp16, smaller ones (and float32 iterations) in one batched
# call per shape: the crossover measured in docs/performance.md ("Figures behind the code's constants").
CPU_ONE_AT_A_TIME = 256
HALF_DTYPES = (torch.bfloat16, torch.float16)


@register(
    Registration("muon", "Muon: spectral-norm steepest descent, msgn of Nesterov momentum by Polar Express (batched)", 0.02, family="spectral", color="#d55e00"),
    Registration(
        "muon-rms-to-rms", "Muon with scale='rms_to_rms': sqrt(fan_out/fan_in)*msgn, the modular seed's width-independent RMS->RMS step", 0.02,
        family="spectral", color="#f0a06a", options={"scale": "rms_to_rms"},
    ),
    Registration(
        "muon-match-adamw", "Muon with scale='match_adamw': 0.2*sqrt(max(m,n))*msgn, update RMS ~0.2 like AdamW (Moonlight)", 3e-3,
        family="adamw-matched", color="#a0522d", options={"scale": "match_adamw"},
    ),
)  # fmt: skip
class Muon(MatrixOptimizer):
    r"""Muon: steepest descent under the spectral (RMS→RMS) norm, on Nesterov momentum.

    .. math::
        B_t = \mu B_{t-1} + (1-\mu) G_t,\quad M_t = (1-\mu) G_t + \mu B_t \ \text{(Nesterov)},\\
        W_t = (1 - \eta\lambda) W_{t-1} - \eta\, s(m, n)\, \mathrm{msgn}(M_t)

    ``msgn`` is :func:`steepest.directions.msgn` (Polar Express by default); ``s`` is
    :func:`steepest.directions.spectral_scale`. With ``msgn_method="newton_schulz"``,
    ``msgn_dtype=torch.bfloat16`` and ``scale="original"`` the update is ``torch.optim.Muon``'s, bit
    for bit. Unlike it, conv weights are accepted (viewed as ``(out, in·kh·kw)``, the scale taken on
    that shape) and same-shape matrices are orthogonalised in one batched call (on a CPU iterating in
    bf16, matrices with both sides ≥ 256 one at a time, with 2-D products into buffers kept between
    steps; on CPUs the norms are read once on the host, which costs nothing there: faster, see
    docs/performance.md).

    Args:
        params: hidden-layer weights (≥ 2-D); give embeddings, the head and 1-D parameters to AdamW
            (:func:`steepest.build_optimizer` does the split).
        lr: learning rate η (default 0.02, KellerJordan/Muon's).
        momentum: μ (default 0.95). nesterov: use ``M_t`` above (default True).
        weight_decay: decoupled λ, ``W *= 1 − lr·λ`` with the unscaled lr (default 0).
        msgn_method: ``"polar_express"`` (default), ``"newton_schulz"`` or ``"svd"``.
        ns_steps: polynomial steps (default 5).
        scale: ``"original"`` (default, ``√max(1, m/n)``), ``"rms_to_rms"`` (``√(m/n)``, the seed's)
            or ``"match_adamw"`` (``0.2·√max(m, n)``).
        msgn_dtype: matmul precision; default :func:`steepest.directions.msgn.default_iteration_dtype`:
            bf16 on CUDA and on CPUs with native bf16 matmuls (AMX or AVX512-BF16), float32 elsewhere.
        nonfinite: ``"raise"`` (default; one host read per step), ``"skip"`` (no host read: the step
            is masked out on the device) or ``"ignore"``.
        compile: ``torch.compile(fullgraph=True)`` each bucket's direction (default False).
        cautious_weight_decay: decay only the entries where ``sign(D) = sign(W)``, i.e. where the
            update also moves the weight towards zero: ``W ← W − η·λ·[sign D = sign W]·W − η·s·D``
            (default False; modded-nanogpt record #43, microsoft/dion's ``cautious_wd``). Every
            matrix optimizer of the library takes it.
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        msgn_method: str = "polar_express",
        ns_steps: int = 5,
        scale: str = "original",
        msgn_dtype: torch.dtype | None = None,
        nonfinite: str = "raise",
        compile: bool = False,
        cautious_weight_decay: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, msgn_method=msgn_method,
            ns_steps=ns_steps, scale=scale, msgn_dtype=msgn_dtype, nonfinite=nonfinite, compile=compile, cautious_weight_decay=cautious_weight_decay,
        )
        super().__init__(params, defaults)

    def validate_group(self, group: dict) -> None:
        super().validate_group(group)
        check_choice(group["msgn_method"], "msgn_method", MSGN_METHODS)
        check_choice(group["scale"], "scale", SPECTRAL_SCALES)
        check_int(group["ns_steps"], "ns_steps")

    def lr_scale(self, group: dict, shape: tuple[int, int]) -> float:
        return spectral_scale(shape, group["scale"])

    def direction_flops(self, group: dict, shape: tuple[int, int]) -> float:
        """msgn by ``q`` polynomial steps: ``q·(4a²b + 2a³)``, ``a = min(m, n)``, ``b = max(m, n)``
        (an SVD counts as 4 steps); used to balance the distributed split."""
        a, b = min(shape), max(shape)
        steps = group["ns_steps"] if group["msgn_method"] != "svd" else 4
        return float(steps * (4 * a * a * b + 2 * a**3))

    def one_at_a_time(self, group: dict, bucket: Bucket) -> bool:
        """Whether the bucket's matrices are orthogonalised one at a time with 2-D products into kept
        buffers: on a CPU, iterating in bf16/fp16, both sides ≥ ``CPU_ONE_AT_A_TIME``, not compiled."""
        device = bucket.momenta[0].device if bucket.momenta else bucket.params[0].device
        dtype = group["msgn_dtype"] or default_iteration_dtype(device)
        on_cpu = device.type == "cpu" and not group["compile"]
        return on_cpu and group["msgn_method"] != "svd" and dtype in HALF_DTYPES and min(bucket.shape) >= CPU_ONE_AT_A_TIME

    def local_units(self, group: dict, bucket: Bucket) -> list[Bucket]:
        """One matrix at a time where :meth:`one_at_a_time` (each direction is computed alone
        anyway), so that the kept buffers hold one matrix; else the batch."""
        return bucket.singles() if self.one_at_a_time(group, bucket) else [bucket]

    def direction(self, group: dict, bucket: Bucket) -> Tensor:
        if group["msgn_method"] == "svd":
            return msgn(bucket.stack(), method="svd", check_finite=False)
        momentum = bucket.momenta[0]
        dtype = group["msgn_dtype"] or default_iteration_dtype(momentum.device)
        method, steps = group["msgn_method"], group["ns_steps"]
        if self.one_at_a_time(group, bucket):
            # one matrix at a time, with 2-D products: CPU BLAS runs them at least as fast as a batched
            # call, and no (k, m, n) stack is copied; every product and the (k, m, n) result go into
            # buffers kept between steps (fresh ones would be paged in again on every step), one
            # workspace per product, reused by every matrix and shape
            D = self.direction_buffer(bucket, momentum.dtype)

            def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
                return self.workspace(("msgn", name), [shape], dtype, momentum.device)[0]

            for slot, m in zip(D.unbind(0), bucket.momenta):
                msgn_polynomial(bucket.matrix(m), method, steps, dtype, out=slot, scratch=scratch)
            return D
        # stack and cast in one copy (none for a lone matrix in the iteration dtype); a float64
        # momentum with a float32/bf16 iteration is stacked as float64 and pre-scaled before its cast
        M = bucket.stack(dtype=dtype if cast_keeps_range(momentum.dtype, dtype) else None)
        return self.math(group, msgn_polynomial)(M, method, steps, dtype).to(momentum.dtype)

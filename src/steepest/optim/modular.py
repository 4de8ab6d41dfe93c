"""Modular steepest descent over the whole network: every parameter normed by its role (Scion)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..directions._checks import compute_dtype
from ..directions.modular import l1_to_rms, rms_to_linf, rms_to_rms, sign_head
from ..directions.msgn import MSGN_METHODS, cast_keeps_range, default_iteration_dtype
from ..execution import Bucket
from ..validation import check_choice, check_int
from .base import MatrixOptimizer, check_hyperparameter, local_tensor
from .registry import Registration, register

__all__ = ["Modular", "ROLES", "ROLE_ATOMS", "STEP_RULES", "role_of_kind", "role_groups"]

ROLES = ("auto", "hidden", "input", "embedding", "embedding-like", "head", "vector")
# the atoms each role accepts, the first its default; "head" and "vector" choose by option
ROLE_ATOMS = {
    "hidden": ("spectral",),
    "input": ("spectral",),
    "embedding": ("embed",),
    "embedding-like": ("embed",),
    "head": ("sign", "rownorm", "spectral"),
    "vector": ("rms", "sign"),
}
STEP_RULES = ("fixed", "dual")
# the default radii: Scion's nanoGPT setting (hidden 50, embedding and head 3000), chosen over its MLP
# setting (1, 1, 2^10) by docs/results/defaults.py's rule (docs/results/defaults.md: the MLP radii
# lose 15% or more of the achievable improvement on the Shakespeare GPT at every swept rate, the
# nanoGPT radii at most 5% on every task at lr 2^-12)
RADIUS, EMBED_RADIUS, HEAD_RADIUS, VECTOR_RADIUS = 50.0, 3000.0, 3000.0, 1.0
# each role's radius option: hidden and input layers share Scion's "radius"
ROLE_RADIUS = {
    "hidden": "radius", "input": "radius", "embedding": "embed_radius", "embedding-like": "embed_radius",
    "head": "head_radius", "vector": "vector_radius",
}  # fmt: skip
# split kinds (steepest.optim.split) -> roles; a MoE router's logits are read like a head's
_KIND_ROLES = {
    "matrix": "hidden", "input": "input", "embedding": "embedding", "embedding-like": "embedding-like",
    "head": "head", "router": "head", "other": "vector",
}  # fmt: skip


def role_of_kind(info) -> str:
    """The role of a classified parameter (a :class:`~steepest.optim.split.ParamInfo`): its kind's,
    except that an embedding that a linear layer also applies (a head tied to it, GPT-2's
    ``wte``/``lm_head``) is a head: updated once, with the head's atom and radius."""
    if info.kind == "embedding" and info.module is not None:
        return "head"
    if info.kind not in _KIND_ROLES:
        raise ValueError(f"parameter {info.name!r} has kind {info.kind!r}, which no role of Modular takes; kinds: {', '.join(_KIND_ROLES)}")
    return _KIND_ROLES[info.kind]


def role_groups(infos: list) -> list[dict]:
    """Named param groups for :class:`Modular`, one per role and layout (``role=``; hidden
    weights stored ``(in, out)`` with ``transposed=True``, stacks of matrices with
    ``matrix_blocks=k``), the hidden groups last, in the order the roles first appear."""
    groups: dict[tuple, list] = {}
    for i in infos:
        role = role_of_kind(i)
        layout = (i.transposed, getattr(i, "blocks", 1)) if role in ("hidden", "input") else (False, 1)
        groups.setdefault((role in ("hidden", "input"), role, *layout), []).append((i.name, i.param))
    out = []
    for (_, role, transposed, blocks), named in sorted(groups.items(), key=lambda kv: kv[0][0]):
        group = {"params": named, "role": role}
        if transposed:
            group["transposed"] = True
        if blocks > 1:
            group["matrix_blocks"] = blocks
        out.append(group)
    return out


@register(
    Registration(
        "modular", "Modular: every layer normed (spectral hidden, l1->RMS embedding, sign head, RMS 1-D), W -= lr*rho*D (modular seed)",
        2**-12, family="modular", color="#1b9e77", roles=True,
    ),
    Registration(
        "scion", "Scion: the same atoms, Frank-Wolfe W <- (1-lr)*W - lr*rho*D, weights in each role's rho-ball (Pethick et al. 2025)",
        2**-12, family="scion", color="#66a61e", roles=True, options={"weight_decay": 1.0},
    ),
)  # fmt: skip
class Modular(MatrixOptimizer):
    r"""Steepest descent with one operator norm per parameter, chosen by its role (the modular seed;
    modula; Scion, Pethick et al. 2025), on EMA momentum ``M ← βM + (1−β)G``:

    .. math::
        W_l \leftarrow (1 - \eta\lambda)\,W_l - \eta\, c_l\, \rho_l\, D_l(M_l)

    ``D_l`` is the duality map of the role's norm (:mod:`steepest.directions.modular`), ``ρ_l`` the
    role's radius. ``λ = 0`` is the unconstrained update (registered ``modular``); ``λ = 1`` is
    Scion's Frank–Wolfe step ``W ← (1−η)W − ηρD`` (registered ``scion``), which keeps every weight
    in its role's ball ``‖W‖ ≤ ρ`` once it is there (for ``η ≤ 1``).

    ``step="fixed"`` (default): ``c_l = 1``, the dual norm folded into the lr, as modula and Scion
    run it. ``step="dual"``: the seed's exact minimiser of ``Σ⟨G_l, ΔW_l⟩ + 1/(2η)·max_l s_l²‖ΔW_l‖²``
    (``lr`` is ``1/λ`` there, an inverse sharpness), ``c_l = t/s_l`` with the global
    ``t = Σ_k ⟨M_k, ρ_k D_k⟩/s_k`` (one inner product per layer: ``⟨G, D⟩`` is the dual norm of an
    exact dualizer). The sensitivities are modula's mass rule: ``s_l = μ/μ_l``, ``μ_l`` the mass of
    ``l``'s param group (``mass``, default 1 per tensor) and ``μ`` their sum, so each layer's share
    of the step is its mass share; the optimizer sees parameters, not the graph, so the
    sensitivities of the modules between layers are taken as 1 (modula's ``Linear``'s). The
    decay of ``weight_decay`` stays ``1 − η·λ``.

    Roles (a param group's ``role``; ``"auto"``, the default: ``"hidden"`` for ≥ 2-D parameters,
    ``"vector"`` below), their atoms and radii:

    ==================  ==============================  ==================
    role                atom (option)                   radius
    ==================  ==============================  ==================
    ``hidden``,         ``spectral``: √(m/n)·msgn       ``radius``
    ``input``
    ``embedding``       ``embed``: rows √d·G_i/‖G_i‖    ``embed_radius``
    ``embedding-like``  ``embed`` on rows of the last   ``embed_radius``
                        dimension (positions, CLS)
    ``head``            ``head_atom``: ``sign``,        ``head_radius``
                        ``rownorm`` or ``spectral``
    ``vector``          ``vector_atom``: ``rms``/``sign``  ``vector_radius``
    ==================  ==============================  ==================

    :func:`steepest.build_optimizer` gives every parameter its role from the split
    (:func:`role_of_kind`): a tied embedding/head weight is a head (Scion's ``Sign`` on GPT's tied
    ``wte``), ViT's position embedding and CLS token are ``embedding-like``. Conv weights are
    viewed ``(out, in·kh·kw)`` (no extra ``1/k²``, see :func:`~steepest.directions.modular.rms_to_rms`).

    Args:
        lr: η (default 2⁻¹², the rate whose worst harness task loses least with the default radii,
            for both ``modular`` and ``scion``: docs/results/defaults.md; Scion's nanoGPT rate is
            0.00036, its MLP rate 2⁻⁶ with the MLP radii). momentum: β (default 0.9: Scion's ``momentum=0.1``
            is ``1 − β``). nesterov: default False (Scion and modula use the plain EMA).
        weight_decay: λ (default 0; ``scion`` registers 1). step: ``"fixed"`` or ``"dual"``.
        radius, embed_radius, head_radius, vector_radius: ρ per role (default 50, 3000, 3000, 1:
            Scion's nanoGPT setting; its MLP setting is 1, 1, 2¹⁰ with lr 2⁻⁶).
        head_atom: ``"sign"`` (default), ``"rownorm"``, ``"spectral"``. vector_atom: ``"rms"``
            (default) or ``"sign"``.
        msgn_method, ns_steps, msgn_dtype: the spectral atom's iteration, as :class:`Muon`'s.
        nonfinite, compile, cautious_weight_decay: as :class:`Muon`'s.

    The momentum follows the parameter's dtype (a bf16 model keeps bf16 momentum, restored exactly
    on resume). Under DDP the gradients arrive averaged and the directions are split across ranks
    as for the other optimizers; FSDP2 row shards (``Shard(0)`` DTensors) are gathered whole per
    matrix, except embedding-like parameters, whose rows are not their first dimension.
    """

    min_ndim = 0

    def __init__(
        self,
        params,
        lr: float | Tensor = 2**-12,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        step: str = "fixed",
        radius: float = RADIUS,
        embed_radius: float = EMBED_RADIUS,
        head_radius: float = HEAD_RADIUS,
        vector_radius: float = VECTOR_RADIUS,
        head_atom: str = "sign",
        vector_atom: str = "rms",
        msgn_method: str = "polar_express",
        ns_steps: int = 5,
        msgn_dtype: torch.dtype | None = None,
        nonfinite: str = "raise",
        compile: bool = False,
        cautious_weight_decay: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, step=step, role="auto", mass=1.0,
            radius=radius, embed_radius=embed_radius, head_radius=head_radius, vector_radius=vector_radius,
            head_atom=head_atom, vector_atom=vector_atom, msgn_method=msgn_method, ns_steps=ns_steps, msgn_dtype=msgn_dtype,
            nonfinite=nonfinite, compile=compile, cautious_weight_decay=cautious_weight_decay,
        )  # fmt: skip
        super().__init__(params, defaults)

    # --- options -------------------------------------------------------------------------------
    def validate_group(self, group: dict) -> None:
        super().validate_group(group)
        check_choice(group["step"], "step", STEP_RULES)
        check_choice(group["role"], "role", ROLES)
        check_choice(group["head_atom"], "head_atom", ROLE_ATOMS["head"])
        check_choice(group["vector_atom"], "vector_atom", ROLE_ATOMS["vector"])
        for key in ("radius", "embed_radius", "head_radius", "vector_radius", "mass"):
            check_hyperparameter(key, group[key])
        if not group["mass"] > 0:
            raise ValueError(f"mass must be a number > 0 (a layer's share of the dual step), got {group['mass']!r}")
        check_choice(group["msgn_method"], "msgn_method", MSGN_METHODS)
        check_int(group["ns_steps"], "ns_steps")

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["role"] in ("auto", "vector"):
            return
        for i, p in enumerate(group["params"]):
            if p.ndim < 2:
                raise ValueError(
                    f"parameter {self._param_name(group, i)} has shape {tuple(p.shape)}: role {group['role']!r} needs >= 2 dims; "
                    "give 1-D parameters role 'vector' (or 'auto')"
                )

    @staticmethod
    def role(group: dict, p: Tensor) -> str:
        """``p``'s role in ``group``: the group's, or for ``"auto"`` hidden (≥ 2-D) / vector."""
        role = group["role"]
        if role == "auto":
            return "hidden" if p.ndim >= 2 else "vector"
        return role

    @staticmethod
    def atom(group: dict, role: str) -> str:
        """The atom of ``role`` in ``group`` (``head_atom``/``vector_atom`` for those two roles)."""
        return group["head_atom"] if role == "head" else group["vector_atom"] if role == "vector" else ROLE_ATOMS[role][0]

    def matrix_shape(self, p: Tensor) -> tuple[int, int]:
        """As :class:`MatrixOptimizer`'s, except that a 1-D parameter is the column ``(numel, 1)``
        (FSDP2 shards its entries as rows) and a scalar ``(1, 1)``."""
        if p.ndim < 2:
            return (max(p.numel(), 1) if p.ndim else 1, 1)
        return super().matrix_shape(p)

    def _buckets(self, params, grads, momenta, states, names, skip):
        # an "auto" group holds both roles: a 1-D bias (n, 1) and an (n, 1) weight never share a batch
        columns = (params, grads, momenta, states, names)
        flat = [i for i, p in enumerate(params) if p.ndim < 2]
        if not flat or len(flat) == len(params):
            return super()._buckets(*columns, skip)
        rest = [i for i in range(len(params)) if params[i].ndim >= 2]
        buckets = []
        for idx in (rest, flat):
            buckets += super()._buckets(*([c[i] for i in idx] for c in columns), skip)
        return buckets

    # --- directions -----------------------------------------------------------------------------
    def direction_flops(self, group: dict, shape: tuple[int, int]) -> float:
        """Spectral atoms as Muon's msgn (``q·(4a²b + 2a³)``); the row and sign atoms ``m·n``."""
        a, b = min(shape), max(shape)
        role = group["role"]
        spectral = role in ("auto", "hidden", "input") or (role == "head" and group["head_atom"] == "spectral")
        return float(group["ns_steps"] * (4 * a * a * b + 2 * a**3) if spectral and a > 1 else a * b)

    def direction(self, group: dict, bucket: Bucket) -> Tensor:
        p, momentum = bucket.params[0], bucket.momenta[0]
        role = self.role(group, p)
        atom = self.atom(group, role)
        if atom == "spectral":
            dtype = group["msgn_dtype"] or default_iteration_dtype(momentum.device)
            M = bucket.stack(dtype=dtype if cast_keeps_range(momentum.dtype, dtype) and group["msgn_method"] != "svd" else None)
            D = self.math(group, rms_to_rms)(M, method=group["msgn_method"], steps=group["ns_steps"], dtype=dtype, check_finite=False)
        else:
            fn, args = _row_atom(role, atom, p.shape[-1] if p.ndim else 1)
            D = self.math(group, fn)(bucket.stack(), *args)
        return (D * group[ROLE_RADIUS[role]]).to(momentum.dtype)

    # --- the step -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One step (``closure`` re-evaluates the model and returns the loss)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rules = {g["step"] for g in self.param_groups}
        if len(rules) > 1:
            raise ValueError(f"step must be the same in every param group (it couples them all), got {sorted(rules)}")
        if rules == {"dual"}:
            self._dual_step()
        else:
            for group in self.param_groups:
                self._step_group(group)
        self.step_done()
        return loss

    def _dual_step(self) -> None:
        """Every group's directions first, then ``c_l = t/s_l`` (class docstring) on each."""
        pending, stepped = [], []
        for group in self.param_groups:
            params, grads, states, names = self._gather(group)
            if not params:
                continue
            skip = self._nonfinite_flag(group, grads, names)
            if skip is not None:
                grads = [g.masked_fill(skip, 0) for g in grads]
            grads = self.transform_gradients(group, params, grads, states)
            momenta = self.update_momentum(group, grads, states, skip)
            buckets = self._buckets(params, grads, momenta, states, names, skip)
            for bucket, D in zip(buckets, self.executor.directions(self, group, buckets)):
                pending.append((group, bucket, D if skip is None else D.masked_fill(skip, 0), skip))
            stepped.extend(states)
        if not pending:
            return
        total = sum(group["mass"] * len(bucket.momenta) for group, bucket, _, _ in pending)
        t = self._global_step(pending, total)
        for group, bucket, D, skip in pending:
            self._apply(group, bucket, D * (t * (group["mass"] / total)).to(D.dtype), skip)
        torch._foreach_add_([s["step"] for s in stepped], 1.0)

    def _global_step(self, pending: list, total: float) -> Tensor:
        """``t = Σ_l (μ_l/μ)·⟨M_l, D_l⟩`` (row shards summed over the ranks), a 0-d tensor."""
        dtype = compute_dtype(pending[0][2].dtype)
        device = pending[0][2].device
        parts = torch.zeros(2, dtype=dtype, device=device)  # [replicated, row-sharded]
        for group, bucket, D, _ in pending:
            share = group["mass"] / total
            for k, (p, m) in enumerate(zip(bucket.params, bucket.momenta)):
                inner = (bucket.matrix(local_tensor(m)).to(dtype) * D[k].to(dtype)).sum()
                parts[int(hasattr(p, "placements"))] += share * inner
        sharded = self.executor.sum_across_ranks([parts[1:]])[0]
        return parts[0] + sharded[0]


def _vector_rms(M: Tensor) -> Tensor:
    """``g/RMS(g)`` of each parameter of a ``(k, m, n)`` stack of views (whole-tensor RMS)."""
    return l1_to_rms(M.reshape(M.shape[0], 1, -1), check_finite=False).reshape(M.shape)


def _embed_rows(M: Tensor, last: int) -> Tensor:
    """The ℓ1→RMS map on rows of ``last`` entries (an embedding-like parameter's last dimension)."""
    return l1_to_rms(M.reshape(M.shape[0], -1, last), check_finite=False).reshape(M.shape)


def _row_atom(role: str, atom: str, last: int) -> tuple[Callable[..., Tensor], tuple]:
    """The non-spectral atom of ``role`` on a ``(k, m, n)`` stack of views, and its extra arguments
    (module-level functions, so that ``compile=True`` compiles each once)."""
    if role == "vector":
        return (torch.sign, ()) if atom == "sign" else (_vector_rms, ())  # a bias's fan-in is 1: sign(g)/1
    if role == "embedding-like":
        return _embed_rows, (last,)
    return {"embed": l1_to_rms, "rownorm": rms_to_linf, "sign": sign_head}[atom], ()

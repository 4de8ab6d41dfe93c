"""Newton-Muon: Muon with the input second moment's inverse on the right (Du & Su 2026)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..directions.newton_muon import damped_inverse
from .base import LocalExecutor, check_hyperparameter
from .input_statistics import InputStatistics, conv_patches
from .muon import Muon
from .registry import Registration, register
from .split import classify_parameters

__all__ = ["NewtonMuon", "conv_patches"]


@register(Registration(
    "newton-muon", "Newton-Muon: msgn(G (ZZ^T)^-1) with input second moments from forward hooks", 0.02,
    family="spectral", color="#cc79a7", needs_model=True,
))  # fmt: skip
class NewtonMuon(Muon):
    r"""``W ← (1 − ηλ)W − η·s(m, n)·msgn(M)``, with ``M`` the momentum of ``G·K⁻¹``.

    ``K`` estimates the second moment ``ZᵀZ/N`` of each matrix's inputs ``Z`` (one row per token,
    ``G`` and ``K`` taken on the ``(out, in)`` view); the settings of the paper (Du & Su 2026,
    arXiv 2604.01472) and of its public reference code are the defaults:

    * ``K ← (1 − ema)·K + ema·ZᵀZ/N`` with ``ema = 0.05``, starting from ``init_diag·I`` (1e-3),
      updated from the inputs of every ``refresh_every``-th step (32); forward pre-hooks that the
      optimizer installs on the model collect them, on those steps only;
    * ``K⁻¹`` of ``K + δI`` with the ridge ``δ = max(damping·tr(K)/d, 1e-4·‖K‖_F) + 1e-8`` (``damping = 0.2``),
      refreshed on the same steps by a float32 Cholesky factorisation (identity if it fails),
      then applied as one GEMM per step;
    * the preconditioning is applied to the raw gradient, before momentum and orthogonalisation;
    * a fused QKV projection (one matrix) shares one estimate, as the paper shares it, and
      separate q, k, v projections that read the same input tensor compute its ``ZᵀZ`` once.

    Where the inputs come from: ``nn.Linear`` and registered matrix modules (their input's last
    dimension), Hugging Face's ``Conv1D`` (stored ``(in, out)``: ``K`` acts on the input side of
    ``Wᵀ``), ``nn.Conv1d/2d/3d`` with ``groups=1`` (``Z`` the unfolded patches,
    :func:`conv_patches`: ``K`` is ``(in·kh·kw)²``) and ``nn.MultiheadAttention``'s input
    projection in self-attention (query, key and value the same tensor). Matrices with no
    statistics are updated as by :class:`~steepest.optim.Muon`, and a warning names them at
    their first refresh: ``MultiheadAttention.out_proj`` (torch applies it with ``F.linear``,
    not through the module, so no hook sees its input), grouped convolutions, cross-attention's
    fused input projection, matrices whose module's forward never ran with hooks (a model run
    only under ``torch.no_grad`` or in eval mode), and every matrix when no ``model`` is given.
    A ``torch.compile``'d model (``torch.compile(model)`` or ``model.compile()``) is supported:
    Dynamo does not guard on module hooks, so :meth:`attach` calls ``torch.compiler.reset()``
    (every compiled function of the process is retraced once on its next call, with the hooks).

    Build it with ``NewtonMuon(params, model=model)`` or :meth:`from_model`; the training loop
    stays unchanged. Other arguments are :class:`Muon`'s.
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 0.02,
        *,
        model: nn.Module | None = None,
        ema: float = 0.05,
        refresh_every: int = 32,
        damping: float = 0.2,
        init_diag: float = 1e-3,
        **muon_options,
    ) -> None:
        super().__init__(params, lr=lr, **muon_options)
        check_hyperparameter("ema", ema, high=1.0)
        check_hyperparameter("damping", damping)
        check_hyperparameter("init_diag", init_diag)
        if isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1:
            raise ValueError(f"refresh_every must be an integer >= 1, got {refresh_every!r}")
        self.ema, self.refresh_every, self.damping, self.init_diag = ema, refresh_every, damping, init_diag
        self.inputs = InputStatistics()  # each hooked matrix's ZᵀZ since its last refresh
        self._checked: set[int] = set()  # matrices whose statistics were checked at a first refresh
        if model is not None:
            self.attach(model)

    @classmethod
    def from_model(cls, model: nn.Module, lr: float | Tensor = 0.02, **options) -> NewtonMuon:
        """A NewtonMuon over ``model``'s hidden matrices (the split of :func:`steepest.build_optimizer`,
        weights stored ``(in, out)`` in a ``transposed`` group, experts and conv groups as ``matrix_blocks``), with its input hooks installed;
        give the other parameters to AdamW."""
        from .build import layout_options

        layouts: dict[tuple[bool, int], list] = {}
        for i in classify_parameters(model).matrix:
            layouts.setdefault((i.transposed, i.blocks), []).append((i.name, i.param))
        groups = [{"params": named, **layout_options(*layout)} for layout, named in layouts.items()]
        return cls(groups, lr=lr, model=model, **options)

    def attach(self, model: nn.Module) -> int:
        """Install input hooks on the modules of ``model`` that apply a matrix this optimizer
        updates (see the class docstring for which); returns how many matrices are hooked."""
        mine = {id(p) for g in self.param_groups for p in g["params"]}

        def columns(module: nn.Module, weight: Tensor, transposed: bool) -> int | None:
            if id(weight) not in mine:
                return None
            if transposed != self.is_transposed(weight):
                raise ValueError(
                    f"NewtonMuon: {type(module).__name__} stores its weight {'(in, out)' if transposed else '(out, in)'}, but its param "
                    f"group says transposed={not transposed}; build with steepest.build_optimizer or NewtonMuon.from_model"
                )
            return self.matrix_shape(weight)[1]

        return self.inputs.attach(model, columns)

    def remove_hooks(self) -> None:
        self.inputs.remove_hooks()

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.update(ema=self.ema, refresh_every=self.refresh_every, damping=self.damping, init_diag=self.init_diag)
        return state

    def __setstate__(self, state: dict) -> None:
        """After ``copy.deepcopy`` or unpickling: torch keeps the state and groups, not the hooks
        (functions of the original model's modules), so the copy starts without input statistics
        (it warns at its first step and updates as Muon) until ``attach(model)`` hooks a model."""
        super().__setstate__(state)
        self.__dict__.setdefault("inputs", InputStatistics())

    # The input statistics under their former names (tests read them).
    _sums = property(lambda self: self.inputs.sums)
    _hooks = property(lambda self: self.inputs.hooks)
    _collecting = property(lambda self: self.inputs.collecting)

    def _as_matrix(self, t: Tensor, p: Tensor) -> Tensor:
        """A gradient (or a row shard of one, possibly empty) as its ``(out, in)`` matrix."""
        m, n = self.matrix_shape(p)
        return t.reshape(n, m).mT if self.is_transposed(p) else t.reshape(t.shape[0], n)

    def transform_gradients(self, group: dict, params: list[Tensor], grads: list[Tensor], states: list[dict]) -> list[Tensor]:
        self._check_statistics(group, [p for p in params if p not in self.inputs])
        hooked = [i for i, p in enumerate(params) if p in self.inputs]
        if not hooked:
            return grads
        refresh = [i for i in hooked if int(states[i]["step"]) % self.refresh_every == 0]
        for i in hooked:
            if "input_moment" not in states[i]:
                n = self.matrix_shape(params[i])[1]
                eye = torch.eye(n, device=params[i].device, dtype=torch.float32)
                states[i]["input_moment"] = self.init_diag * eye
                states[i]["input_moment_inverse"] = eye
        if refresh:
            empty = self._refresh([params[i] for i in refresh], [states[i] for i in refresh])
            self._check_statistics(group, empty, hooked=True)
            self._checked.update(id(params[i]) for i in refresh)
        out = list(grads)
        by_shape: dict[tuple, list[int]] = {}
        for i in hooked:
            by_shape.setdefault((tuple(grads[i].shape), self.is_transposed(params[i]), grads[i].device), []).append(i)
        for idx in by_shape.values():
            G = torch.stack([self._as_matrix(grads[i], params[i]) for i in idx])
            Kinv = torch.stack([states[i]["input_moment_inverse"] for i in idx])
            P = (G.float() @ Kinv).to(G.dtype)
            for j, i in enumerate(idx):
                p = params[i]
                out[i] = (P[j].mT if self.is_transposed(p) else P[j]).reshape(grads[i].shape)
        return out

    def _check_statistics(self, group: dict, params: list[Tensor], hooked: bool = False) -> None:
        """Warn once per matrix, at its first refresh in this process with a nonzero lr, when it has
        no input statistics (it is then updated as by Muon)."""
        new = [p for p in params if id(p) not in self._checked]
        if not new or float(group["lr"]) == 0:  # a zero-lr step (torch.distributed.checkpoint's state
            return  # initialisation) moves nothing: the first real step warns
        self._checked.update(id(p) for p in new)
        index = {id(p): i for i, p in enumerate(group["params"])}
        names = ", ".join(self._param_name(group, index[id(p)]) for p in new)
        if hooked:
            why = ("no training-mode forward with gradients enabled ran through their modules' hooks before their first "
                   "refresh (only forwards under torch.no_grad or in eval mode, or a forward that bypasses the modules' "
                   "__call__)")
        else:
            why = ("no module of the model applies them in a way NewtonMuon can observe (nn.MultiheadAttention.out_proj "
                   "is applied through F.linear; grouped convolutions; cross-attention's fused input projection; "
                   "parameters of no matrix module; or no model= given)")
        warnings.warn(f"NewtonMuon: no input statistics for {names}: {why}; they are updated as by Muon", stacklevel=4)

    def _refresh(self, params: list[Tensor], states: list[dict]) -> list[Tensor]:
        """EMA update of K from the collected inputs, then K⁻¹ (:func:`~steepest.directions.newton_muon.damped_inverse`,
        float32, batched per size); returns the matrices that had no inputs since the last refresh."""
        by_size: dict[tuple, list[int]] = {}
        totals, counts = self._collected_inputs(params)
        empty = []
        for j, p in enumerate(params):
            total, count = totals[j], counts[j]
            if total is not None and count > 0:
                K = states[j]["input_moment"]
                states[j]["input_moment"] = (1 - self.ema) * K + self.ema * (total / count)
            else:
                empty.append(p)
            by_size.setdefault((self.matrix_shape(p)[1], p.device), []).append(j)
        for idx in by_size.values():
            inverse = damped_inverse(torch.stack([states[j]["input_moment"] for j in idx]), self.damping)
            for j, inv in zip(idx, inverse.unbind(0)):
                states[j]["input_moment_inverse"] = inv
        return empty

    def _collected_inputs(self, params: list[Tensor]) -> tuple[list[Tensor | None], list[int]]:
        """Each weight's ``ZᵀZ`` sum and input count since the last refresh, over all ranks: under
        DDP/FSDP each rank sees its own batch, and every rank must build the same ``K``."""
        totals, counts = self.inputs.take(params)
        if isinstance(self.executor, LocalExecutor):
            return totals, counts
        sizes = [self.matrix_shape(p)[1] for p in params]
        totals = [t if t is not None else torch.zeros(n, n, device=p.device) for t, p, n in zip(totals, params, sizes)]
        count_tensor = torch.tensor(counts, dtype=torch.float64, device=totals[0].device)
        *totals, count_tensor = self.executor.sum_across_ranks([*totals, count_tensor])
        return totals, [int(c) for c in count_tensor.tolist()]

    @torch.no_grad()
    def step_done(self) -> None:
        self.inputs.release()
        self._schedule_collection()

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._schedule_collection()

    def _schedule_collection(self) -> None:
        """Collect inputs in the next step only if it refreshes K for some matrix (or before any step)."""
        steps = [int(self.state[p]["step"]) for p in self.inputs.sums if p in self.state and "step" in self.state[p]]
        self.inputs.collecting = any(s % self.refresh_every == 0 for s in steps) if steps else True

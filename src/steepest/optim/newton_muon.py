"""Newton-Muon: Muon with the input second moment's inverse on the right (Du & Su 2026)."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..directions.newton_muon import MIN_RIDGE
from .base import LocalExecutor, check_hyperparameter
from .muon import Muon
from .split import classify_parameters, matrix_modules

__all__ = ["NewtonMuon", "conv_patches"]


def conv_patches(x: Tensor, conv: nn.modules.conv._ConvNd) -> Tensor:
    """The rows ``Z`` (one per output position, ``(N·L, in·k₁·k₂…)``) that ``conv`` multiplies by
    its weight viewed as ``(out, in·k₁·k₂…)``: ``conv(x) = Z Wᵀ`` reshaped. ``x`` is ``(N, C, *spatial)``
    (or unbatched ``(C, *spatial)``); padding (any ``padding_mode``), stride and dilation are
    ``conv``'s. Only ``groups=1`` (a grouped conv's columns see different inputs per group)."""
    d = len(conv.kernel_size)
    if x.ndim == d + 1:
        x = x.unsqueeze(0)
    if conv.padding_mode != "zeros":
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding = (0,) * d
    elif isinstance(conv.padding, str):  # "same"/"valid": the padding torch applies
        padding = conv._reversed_padding_repeated_twice if conv.padding == "same" else (0,) * (2 * d)
        x = F.pad(x, padding)
        padding = (0,) * d
    else:
        padding = conv.padding
    x = F.pad(x, [p for pad in reversed(padding) for p in (pad, pad)]) if any(padding) else x
    for i, (k, s, dil) in enumerate(zip(conv.kernel_size, conv.stride, conv.dilation)):
        span = (k - 1) * dil + 1
        x = x.unfold(2 + i, span, s)  # (N, C, L…, span…) with the window dims appended
        if dil > 1:
            x = x[..., ::dil]
    # x: (N, C, L1..Ld, K1..Kd) -> (N, L1..Ld, C, K1..Kd) -> (N·L, C·K)
    n, c = x.shape[:2]
    dims = [0, *range(2, 2 + d), 1, *range(2 + d, 2 + 2 * d)]
    return x.permute(dims).reshape(-1, c * math.prod(conv.kernel_size))


def _first(args: tuple, kwargs: dict) -> Tensor | None:
    return args[0] if args and isinstance(args[0], Tensor) else None


def _extractor(module: nn.Module, attr: str, n: int):
    """How to read the inputs of ``module``'s matrix ``attr`` (``n`` input columns) in a forward
    pre-hook: ``(key, source, rows)``, ``source(args, kwargs)`` the tensor it reads (or None) and
    ``rows(x)`` its rows ``Z`` (``(tokens, n)``, or None if ``x`` does not fit); ``key`` names the
    transformation, so that one tensor read by several modules (q, k, v) has its moment computed
    once. None: unsupported."""
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups != 1 or module.transposed:
            return None
        d = len(module.kernel_size)
        key = ("conv", module.in_channels, module.kernel_size, module.stride, module.padding, module.dilation, module.padding_mode)

        def patches(x: Tensor) -> Tensor | None:
            return conv_patches(x, module) if x.ndim in (d + 1, d + 2) and x.shape[-d - 1] == module.in_channels else None

        return key, _first, patches

    def rows(x: Tensor) -> Tensor | None:
        return x.reshape(-1, n) if x.shape[-1] == n else None

    if isinstance(module, nn.MultiheadAttention):
        def inputs(args: tuple, kwargs: dict) -> list:
            return [args[i] if i < len(args) else kwargs.get(k) for i, k in enumerate(("query", "key", "value"))]

        if attr == "in_proj_weight":  # one matrix for q, k and v: it has one input only in self-attention
            def source(args: tuple, kwargs: dict) -> Tensor | None:
                q, k, v = inputs(args, kwargs)
                return q if q is k and k is v else None
        else:
            which = ("q_proj_weight", "k_proj_weight", "v_proj_weight").index(attr)

            def source(args: tuple, kwargs: dict) -> Tensor | None:
                return inputs(args, kwargs)[which]

        return ("rows", n), source, rows
    # nn.Linear, HF Conv1D and registered modules: applied to the last dimension of their input
    return ("rows", n), _first, rows


def _compiled(model: nn.Module) -> bool:
    """Whether ``model`` is (or holds) a ``torch.compile``'d module."""
    from torch._dynamo.eval_frame import OptimizedModule

    return any(isinstance(m, OptimizedModule) or getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


class NewtonMuon(Muon):
    r"""``W ← (1 − ηλ)W − η·s(m, n)·msgn(M)``, with ``M`` the momentum of ``G·K⁻¹``.

    ``K`` estimates the second moment ``ZᵀZ/N`` of each matrix's inputs ``Z`` (one row per token,
    ``G`` and ``K`` taken on the ``(out, in)`` view); the paper's reference settings (arXiv
    2604.01472, ``../reference.md`` §1) are the defaults:

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
        self._collecting = True
        self._sums: dict[Tensor, list] = {}
        self._hooks = []
        self._shared: tuple | None = None  # the last input's moment: (input, version, key, ZᵀZ, rows)
        self._checked: set[int] = set()  # matrices whose statistics were checked at a first refresh
        if model is not None:
            self.attach(model)

    @classmethod
    def from_model(cls, model: nn.Module, lr: float | Tensor = 0.02, **options) -> NewtonMuon:
        """A NewtonMuon over ``model``'s hidden matrices (the split of :func:`steepest.build_optimizer`,
        weights stored ``(in, out)`` in a ``transposed`` group), with its input hooks installed;
        give the other parameters to AdamW."""
        matrix = classify_parameters(model).matrix
        plain = [(i.name, i.param) for i in matrix if not i.transposed]
        flipped = [(i.name, i.param) for i in matrix if i.transposed]
        groups = ([{"params": plain}] if plain else []) + ([{"params": flipped, "transposed": True}] if flipped else [])
        return cls(groups, lr=lr, model=model, **options)

    def attach(self, model: nn.Module) -> int:
        """Install input hooks on the modules of ``model`` that apply a matrix this optimizer
        updates (see the class docstring for which); returns how many matrices are hooked."""
        mine = {id(p) for g in self.param_groups for p in g["params"]}
        # nn.MultiheadAttention applies out_proj's weight with F.linear, never calling the module
        bypassed = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
        count = 0
        for module, weight, transposed in matrix_modules(model):
            if id(weight) not in mine or weight in self._sums or id(module) in bypassed:
                continue
            if transposed != self.is_transposed(weight):
                raise ValueError(
                    f"NewtonMuon: {type(module).__name__} stores its weight {'(in, out)' if transposed else '(out, in)'}, but its param "
                    f"group says transposed={not transposed}; build with steepest.build_optimizer or NewtonMuon.from_model"
                )
            attr = next(a for a in ("weight", "in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight") if getattr(module, a, None) is weight)
            found = _extractor(module, attr, self.matrix_shape(weight)[1])
            if found is None:
                continue
            self._hooks.append(module.register_forward_pre_hook(self._make_hook(weight, *found), with_kwargs=True))
            self._sums[weight] = [None, 0]
            count += 1
        if count and _compiled(model):
            # Dynamo does not guard on module hooks: code compiled before they existed would keep
            # running without them. Drop the compiled code, so that it is retraced with the hooks.
            torch.compiler.reset()
        return count

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def _make_hook(self, weight: Tensor, key: tuple, source, rows):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if not (self._collecting and module.training and torch.is_grad_enabled()):
                return
            x = source(args, kwargs)
            if x is None:
                return
            with torch.no_grad():
                shared = self._shared
                if shared is not None and shared[0] is x and shared[1] == x._version and shared[2] == key:
                    gram, count = shared[3], shared[4]
                else:
                    Z = rows(x)
                    if Z is None:
                        return
                    Z = Z.detach().float()
                    gram, count = Z.mT @ Z, Z.shape[0]
                    self._shared = (x, x._version, key, gram, count)  # held until the step
                acc = self._sums[weight]
                acc[0] = gram if acc[0] is None else acc[0] + gram
                acc[1] += count

        return hook

    def _as_matrix(self, t: Tensor, p: Tensor) -> Tensor:
        """A gradient (or a row shard of one, possibly empty) as its ``(out, in)`` matrix."""
        m, n = self.matrix_shape(p)
        return t.reshape(n, m).mT if self.is_transposed(p) else t.reshape(t.shape[0], n)

    def transform_gradients(self, group: dict, params: list[Tensor], grads: list[Tensor], states: list[dict]) -> list[Tensor]:
        self._check_statistics(group, [p for p in params if p not in self._sums])
        hooked = [i for i, p in enumerate(params) if p in self._sums]
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
        """Warn once per matrix, at its first refresh in this process, when it has no input
        statistics (it is then updated as by Muon)."""
        new = [p for p in params if id(p) not in self._checked]
        if not new:
            return
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
        """EMA update of K from the collected inputs, then K⁻¹ (float32 Cholesky, batched per
        size); returns the matrices that had no inputs since the last refresh."""
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
            self._sums[p] = [None, 0]
            by_size.setdefault((self.matrix_shape(p)[1], p.device), []).append(j)
        for idx in by_size.values():
            K = torch.stack([states[j]["input_moment"] for j in idx])
            d = K.shape[-1]
            ridge = torch.maximum(self.damping * torch.diagonal(K, dim1=-2, dim2=-1).sum(-1) / d, MIN_RIDGE * torch.linalg.matrix_norm(K)) + 1e-8  # damping 0 on a singular K: still factorisable
            eye = torch.eye(d, device=K.device, dtype=K.dtype)
            chol, info = torch.linalg.cholesky_ex(K + ridge[:, None, None] * eye)
            inverse = torch.where((info == 0)[:, None, None], torch.cholesky_inverse(chol), eye)
            for j, inv in zip(idx, inverse.unbind(0)):
                states[j]["input_moment_inverse"] = inv
        return empty

    def _collected_inputs(self, params: list[Tensor]) -> tuple[list[Tensor | None], list[int]]:
        """Each weight's ``ZᵀZ`` sum and input count since the last refresh, over all ranks: under
        DDP/FSDP each rank sees its own batch, and every rank must build the same ``K``."""
        totals = [self._sums[p][0] for p in params]
        counts = [self._sums[p][1] for p in params]
        if isinstance(self.executor, LocalExecutor):
            return totals, counts
        sizes = [self.matrix_shape(p)[1] for p in params]
        totals = [t if t is not None else torch.zeros(n, n, device=p.device) for t, p, n in zip(totals, params, sizes)]
        count_tensor = torch.tensor(counts, dtype=torch.float64, device=totals[0].device)
        *totals, count_tensor = self.executor.sum_across_ranks([*totals, count_tensor])
        return totals, [int(c) for c in count_tensor.tolist()]

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        self._shared = None  # release the last input
        steps = [int(self.state[p]["step"]) for p in self._sums if p in self.state and "step" in self.state[p]]
        self._collecting = any(s % self.refresh_every == 0 for s in steps) if steps else True
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        steps = [int(self.state[p]["step"]) for p in self._sums if p in self.state and "step" in self.state[p]]
        self._collecting = any(s % self.refresh_every == 0 for s in steps) if steps else True

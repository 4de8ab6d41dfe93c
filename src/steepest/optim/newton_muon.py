"""Newton-Muon: Muon with the input second moment's inverse on the right (Du & Su 2026)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import LocalExecutor, check_hyperparameter
from .muon import Muon

__all__ = ["NewtonMuon"]


class NewtonMuon(Muon):
    r"""``W ← (1 − ηλ)W − η·s(m, n)·msgn(M)``, with ``M`` the momentum of ``G·K⁻¹``.

    ``K`` estimates the second moment ``ZZᵀ/N`` of each ``nn.Linear``'s inputs ``Z``; the paper's
    reference settings (arXiv 2604.01472, ``../reference.md`` §1) are the defaults:

    * ``K ← (1 − ema)·K + ema·ZᵀZ/N`` with ``ema = 0.05``, starting from ``init_diag·I`` (1e-3),
      updated from the inputs of every ``refresh_every``-th step (32); forward pre-hooks that the
      optimizer installs on the model collect them, on those steps only;
    * ``K⁻¹`` of ``K + δI`` with the ridge ``δ = damping·tr(K)/d + 1e-8`` (``damping = 0.2``),
      refreshed on the same steps by a float32 Cholesky factorisation (identity if it fails),
      then applied as one GEMM per step;
    * the preconditioning is applied to the raw gradient, before momentum and orthogonalisation;
    * a fused QKV projection (one ``nn.Linear``) shares one estimate, as the paper shares it.

    Weights with no ``nn.Linear`` found in ``model`` (conv weights, or no ``model`` given) are
    updated as by :class:`~steepest.optim.Muon`. Build it with ``NewtonMuon(params, model=model)``
    or :meth:`from_model`; the training loop stays unchanged. Other arguments are :class:`Muon`'s.
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
        if model is not None:
            self.attach(model)

    @classmethod
    def from_model(cls, model: nn.Module, lr: float | Tensor = 0.02, **options) -> NewtonMuon:
        """A NewtonMuon over ``model``'s hidden matrices (the split of :func:`steepest.build_optimizer`),
        with its input hooks installed; give the other parameters to AdamW."""
        from .build import split_parameters

        matrix, _ = split_parameters(model)
        return cls([p for _, p in matrix], lr=lr, model=model, **options)

    def attach(self, model: nn.Module) -> int:
        """Install input hooks on every ``nn.Linear`` of ``model`` whose weight this optimizer
        updates; returns how many."""
        mine = {id(p) for g in self.param_groups for p in g["params"]}
        count = 0
        for module in model.modules():
            if isinstance(module, nn.Linear) and id(module.weight) in mine:
                self._hooks.append(module.register_forward_pre_hook(self._make_hook(module.weight)))
                self._sums.setdefault(module.weight, [None, 0])
                count += 1
        return count

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def _make_hook(self, weight: Tensor):
        def hook(module: nn.Module, args: tuple) -> None:
            if not (self._collecting and module.training and torch.is_grad_enabled()):
                return
            with torch.no_grad():
                Z = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                acc = self._sums[weight]
                gram = Z.mT @ Z
                acc[0] = gram if acc[0] is None else acc[0] + gram
                acc[1] += Z.shape[0]

        return hook

    def transform_gradients(self, group: dict, params: list[Tensor], grads: list[Tensor], states: list[dict]) -> list[Tensor]:
        hooked = [i for i, p in enumerate(params) if p in self._sums and params[i].ndim == 2]
        if not hooked:
            return grads
        refresh = [i for i in hooked if int(states[i]["step"]) % self.refresh_every == 0]
        for i in hooked:
            if "input_moment" not in states[i]:
                n = params[i].shape[1]
                eye = torch.eye(n, device=params[i].device, dtype=torch.float32)
                states[i]["input_moment"] = self.init_diag * eye
                states[i]["input_moment_inverse"] = eye
        if refresh:
            self._refresh([params[i] for i in refresh], [states[i] for i in refresh])
        out = list(grads)
        by_shape: dict[tuple, list[int]] = {}
        for i in hooked:
            by_shape.setdefault((tuple(params[i].shape), params[i].device), []).append(i)
        for idx in by_shape.values():
            G = torch.stack([grads[i] for i in idx])
            Kinv = torch.stack([states[i]["input_moment_inverse"] for i in idx])
            P = (G.float() @ Kinv).to(G.dtype)
            for j, i in enumerate(idx):
                out[i] = P[j]
        return out

    def _refresh(self, params: list[Tensor], states: list[dict]) -> None:
        """EMA update of K from the collected inputs, then K⁻¹ (float32 Cholesky, batched per size)."""
        by_size: dict[tuple, list[int]] = {}
        totals, counts = self._collected_inputs(params)
        for j, p in enumerate(params):
            total, count = totals[j], counts[j]
            if total is not None and count > 0:
                K = states[j]["input_moment"]
                states[j]["input_moment"] = (1 - self.ema) * K + self.ema * (total / count)
            self._sums[p] = [None, 0]
            by_size.setdefault((p.shape[1], p.device), []).append(j)
        for idx in by_size.values():
            K = torch.stack([states[j]["input_moment"] for j in idx])
            d = K.shape[-1]
            ridge = self.damping * torch.diagonal(K, dim1=-2, dim2=-1).sum(-1) / d + 1e-8
            eye = torch.eye(d, device=K.device, dtype=K.dtype)
            chol, info = torch.linalg.cholesky_ex(K + ridge[:, None, None] * eye)
            inverse = torch.where((info == 0)[:, None, None], torch.cholesky_inverse(chol), eye)
            for j, inv in zip(idx, inverse.unbind(0)):
                states[j]["input_moment_inverse"] = inv

    def _collected_inputs(self, params: list[Tensor]) -> tuple[list[Tensor | None], list[int]]:
        """Each weight's ``ZᵀZ`` sum and input count since the last refresh, over all ranks: under
        DDP/FSDP each rank sees its own batch, and every rank must build the same ``K``."""
        totals = [self._sums[p][0] for p in params]
        counts = [self._sums[p][1] for p in params]
        if isinstance(self.executor, LocalExecutor):
            return totals, counts
        totals = [t if t is not None else torch.zeros(p.shape[1], p.shape[1], device=p.device) for t, p in zip(totals, params)]
        count_tensor = torch.tensor(counts, dtype=torch.float64, device=totals[0].device)
        *totals, count_tensor = self.executor.sum_across_ranks([*totals, count_tensor])
        return totals, [int(c) for c in count_tensor.tolist()]

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        steps = [int(self.state[p]["step"]) for p in self._sums if p in self.state and "step" in self.state[p]]
        self._collecting = any(s % self.refresh_every == 0 for s in steps) if steps else True
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        steps = [int(self.state[p]["step"]) for p in self._sums if p in self.state and "step" in self.state[p]]
        self._collecting = any(s % self.refresh_every == 0 for s in steps) if steps else True

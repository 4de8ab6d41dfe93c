"""Bookkeeping shared by the matrix optimizers; the math lives in :mod:`steepest.directions`.

Each step, per param group:

1. gradients are checked for NaN/Inf (``nonfinite="raise"|"skip"|"ignore"``),
2. optionally transformed (Newton-Muon's right preconditioning),
3. folded into an EMA momentum ``B ← μB + (1−μ)G`` (Nesterov: ``M = (1−μ)G + μB``, else ``M = B``),
4. grouped by (matrix shape, dtype, device) so that each group's directions are one batched call
   ``D = direction(M)`` on a ``(k, m, n)`` stack (conv weights are viewed as ``(out, in·kh·kw)``),
5. applied with decoupled weight decay: ``W ← (1 − lr·wd)·W − lr·s(m, n)·D``.

No step reads a device value back to the host except ``nonfinite="raise"`` (one read per step)
and what the subclasses document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["MatrixOptimizer", "Bucket", "LocalExecutor", "NonFiniteGradientError", "NONFINITE_MODES", "check_hyperparameter"]

NONFINITE_MODES = ("raise", "skip", "ignore")


class NonFiniteGradientError(ValueError):
    """A gradient held NaN or Inf (raised by ``nonfinite="raise"``)."""


@dataclass
class Bucket:
    """Same-shape matrices of one param group, updated by one batched call."""

    shape: tuple[int, int]
    params: list[Tensor]
    grads: list[Tensor]
    momenta: list[Tensor]
    states: list[dict]
    names: list[str]

    def stack(self, tensors: list[Tensor] | None = None) -> Tensor:
        """The momenta (or ``tensors``) as one ``(k, m, n)`` stack."""
        return torch.stack([t.reshape(self.shape) for t in (self.momenta if tensors is None else tensors)])

    def stack_state(self, key: str) -> Tensor:
        return torch.stack([s[key] for s in self.states])

    def store_state(self, key: str, values: Tensor) -> None:
        """Write a ``(k, ...)`` stack back into the matrices' states, one slice each."""
        for s, v in zip(self.states, values.unbind(0)):
            s[key] = v


class LocalExecutor:
    """Computes every bucket's direction in this process (the single-process path)."""

    def directions(self, optimizer: "MatrixOptimizer", group: dict, buckets: list[Bucket]) -> list[Tensor]:
        return [optimizer.direction(group, bucket) for bucket in buckets]


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_hyperparameter(name: str, value: object, *, low: float = 0.0, high: float | None = None, high_open: bool = False) -> None:
    """``low ≤ value (≤ or <) high``; a scalar tensor is accepted for ``lr`` only."""
    if name == "lr" and isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"lr must be a number or a 1-element tensor, got a tensor of shape {tuple(value.shape)}")
        value = float(value.detach().cpu())
    if not _is_number(value) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < low or (high is not None and (value >= high if high_open else value > high)):
        bound = f"[{low}, {high}{')' if high_open else ']'}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bound}, got {value!r}")


class MatrixOptimizer(Optimizer):
    """Base class: see the module docstring. Subclasses implement :meth:`direction`."""

    min_ndim = 2

    def __init__(self, params, defaults: dict) -> None:
        super().__init__(params, defaults)

    # --- construction and validation -------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self.validate_group(group)
        for i, p in enumerate(group["params"]):
            name = self._param_name(group, i)
            if p.is_complex():
                raise ValueError(f"{type(self).__name__} does not support complex parameters ({name}); view it as real with torch.view_as_real")
            if p.ndim < self.min_ndim:
                raise ValueError(
                    f"{type(self).__name__} updates matrices, but parameter {name} has shape {tuple(p.shape)}; "
                    "give 1-D parameters (biases, norm scales) to AdamW, e.g. with steepest.build_optimizer(model, ...)"
                )

    def validate_group(self, group: dict) -> None:
        """Check the hyperparameters of one param group; subclasses extend it."""
        check_hyperparameter("lr", group["lr"])
        check_hyperparameter("momentum", group["momentum"], high=1.0, high_open=True)
        check_hyperparameter("weight_decay", group["weight_decay"])
        if not isinstance(group.get("compile", False), bool):
            raise ValueError(f"compile must be True or False, got {group['compile']!r}")
        if group["nonfinite"] not in NONFINITE_MODES:
            raise ValueError(f"unknown nonfinite {group['nonfinite']!r}; accepted values: {', '.join(map(repr, NONFINITE_MODES))}")

    @staticmethod
    def _param_name(group: dict, i: int) -> str:
        names = group.get("param_names")
        if names is not None and i < len(names):
            return repr(names[i])
        return f"#{i} of its param group"

    # --- hooks for subclasses ----------------------------------------------------------------
    def direction(self, group: dict, bucket: Bucket) -> Tensor:
        """``D`` of shape ``(k, m, n)`` for the bucket's momenta (``bucket.stack()``); may read and
        write the matrices' states (``bucket.states``)."""
        raise NotImplementedError

    def lr_scale(self, group: dict, shape: tuple[int, int]) -> float:
        """Shape-dependent factor on the learning rate (Muon's ``√max(1, m/n)``)."""
        return 1.0

    def transform_gradients(self, group: dict, params: list[Tensor], grads: list[Tensor], states: list[dict]) -> list[Tensor]:
        """Gradients before momentum (Newton-Muon preconditions here)."""
        return grads

    def math(self, group: dict, fn: Callable) -> Callable:
        """``fn``, a pure function of tensors, compiled with ``torch.compile(fullgraph=True)`` when
        the group was built with ``compile=True`` (one compiled version per function, reused)."""
        if not group.get("compile", False):
            return fn
        cache = self.__dict__.setdefault("_compiled", {})
        if fn not in cache:
            cache[fn] = torch.compile(fn, fullgraph=True)
        return cache[fn]

    def matrix_shape(self, p: Tensor) -> tuple[int, int]:
        return (p.shape[0], p[0].numel()) if p.ndim >= 2 else (1, p.numel())

    # --- the step ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """Perform one step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _gather(self, group: dict) -> tuple[list[Tensor], list[Tensor], list[dict], list[str]]:
        params, grads, states, names = [], [], [], []
        for i, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            name = self._param_name(group, i)
            if g.is_sparse:
                raise ValueError(f"{type(self).__name__} does not support sparse gradients ({name}); use torch.optim.SparseAdam for sparse embeddings")
            if g.is_complex():
                raise ValueError(f"{type(self).__name__} does not support complex gradients ({name})")
            if g.shape != p.shape:
                raise ValueError(f"gradient of {name} has shape {tuple(g.shape)}, the parameter {tuple(p.shape)}")
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(g)
            states.append(state)
            names.append(name)
        return params, grads, states, names

    def _nonfinite_flag(self, group: dict, grads: list[Tensor], names: list[str]) -> Tensor | None:
        mode = group["nonfinite"]
        if mode == "ignore":
            return None
        bad = ~torch.isfinite(torch.stack([n.to(torch.float32) for n in torch._foreach_norm(grads, float("inf"))]))
        if mode == "skip":
            return bad.any()
        if bool(bad.any()):  # the one host read of nonfinite="raise"
            name = names[int(bad.nonzero()[0, 0])]
            raise NonFiniteGradientError(
                f"non-finite gradient (NaN or Inf) in parameter {name}; lower the learning rate or clip gradients, "
                f"or construct {type(self).__name__}(..., nonfinite='skip') to skip such steps"
            )
        return None

    def _step_group(self, group: dict) -> None:
        params, grads, states, names = self._gather(group)
        if not params:
            return
        skip = self._nonfinite_flag(group, grads, names)
        if skip is not None:
            grads = [g.masked_fill(skip, 0) for g in grads]
        grads = self.transform_gradients(group, params, grads, states)
        momenta = self._momentum(group, grads, states, skip)
        buckets = self._buckets(params, grads, momenta, states, names)
        for bucket, D in zip(buckets, self.executor.directions(self, group, buckets)):
            if skip is not None:
                D = D.masked_fill(skip, 0)
            self._apply(group, bucket, D, skip)
        torch._foreach_add_([s["step"] for s in states], 1.0)

    @property
    def executor(self) -> "LocalExecutor":
        """Where the bucket directions are computed: here, or split across ranks."""
        executor = getattr(self, "_executor", None)
        if executor is None:
            executor = self._executor = LocalExecutor()
        return executor

    @executor.setter
    def executor(self, value: "LocalExecutor") -> None:
        self._executor = value

    def _momentum(self, group: dict, grads: list[Tensor], states: list[dict], skip: Tensor | None) -> list[Tensor]:
        mu = group["momentum"]
        if mu == 0:
            return grads
        bufs = [s["momentum_buffer"] for s in states]
        weight = 1 - mu if skip is None else (1 - mu) * (~skip).to(torch.float32)
        torch._foreach_lerp_(bufs, grads, weight)
        return torch._foreach_lerp(grads, bufs, mu) if group["nesterov"] else bufs

    def _buckets(self, params, grads, momenta, states, names) -> list[Bucket]:
        buckets: dict[tuple, Bucket] = {}
        for p, g, m, s, n in zip(params, grads, momenta, states, names):
            shape = self.matrix_shape(p)
            key = (shape, p.dtype, p.device)
            if key not in buckets:
                buckets[key] = Bucket(shape, [], [], [], [], [])
            b = buckets[key]
            b.params.append(p)
            b.grads.append(g)
            b.momenta.append(m)
            b.states.append(s)
            b.names.append(n)
        return list(buckets.values())

    def _apply(self, group: dict, bucket: Bucket, D: Tensor, skip: Tensor | None) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        updates = [d.view(p.shape) for d, p in zip(D.unbind(0), bucket.params)]
        scale = self.lr_scale(group, bucket.shape)
        if wd != 0:
            decay = 1 - lr * wd
            if skip is not None:
                decay = torch.where(skip, 1.0, decay)
            torch._foreach_mul_(bucket.params, decay)
        if isinstance(lr, Tensor):
            torch._foreach_add_(bucket.params, torch._foreach_mul(updates, -lr * scale))
        else:
            torch._foreach_add_(bucket.params, updates, alpha=-(lr * scale))


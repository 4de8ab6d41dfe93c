"""The inputs of a model's matrix modules: forward pre-hooks that sum each weight's ``ZᵀZ``.

``Z`` holds one row per token of the inputs that a module multiplies by its weight's ``(out, in)``
view: the input's last dimension for ``nn.Linear``, Hugging Face's ``Conv1D`` and registered
matrix modules; the unfolded patches for ``nn.Conv1d/2d/3d`` with ``groups=1``
(:func:`conv_patches`); ``nn.MultiheadAttention``'s query, key or value for its separate input
projections, and for its fused one in self-attention only (query, key and value the same
tensor). Newton-Muon (:class:`~steepest.optim.NewtonMuon`) builds its second moments from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .split import matrix_modules

__all__ = ["InputStatistics", "conv_patches"]

_MATRIX_ATTRS = ("weight", "in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


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
        return ("rows", n), _attention_source(attr), rows
    # nn.Linear, HF Conv1D and registered modules: applied to the last dimension of their input
    return ("rows", n), _first, rows


def _attention_source(attr: str):
    """The tensor that ``nn.MultiheadAttention``'s input projection ``attr`` reads: the query,
    key or value; for the fused ``in_proj_weight``, their one tensor in self-attention only."""

    def inputs(args: tuple, kwargs: dict) -> list:
        return [args[i] if i < len(args) else kwargs.get(k) for i, k in enumerate(("query", "key", "value"))]

    if attr == "in_proj_weight":  # one matrix for q, k and v: it has one input only in self-attention

        def source(args: tuple, kwargs: dict) -> Tensor | None:
            q, k, v = inputs(args, kwargs)
            return q if q is k and k is v else None

        return source
    which = ("q_proj_weight", "k_proj_weight", "v_proj_weight").index(attr)

    def source(args: tuple, kwargs: dict) -> Tensor | None:
        return inputs(args, kwargs)[which]

    return source


def _compiled(model: nn.Module) -> bool:
    """Whether ``model`` is (or holds) a ``torch.compile``'d module."""
    from torch._dynamo.eval_frame import OptimizedModule

    return any(isinstance(m, OptimizedModule) or getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


class InputStatistics:
    """Per hooked weight, ``sums[weight] = [ΣZᵀZ, rows]`` (float32; ``[None, 0]`` when nothing
    was read) over the training-mode forwards with gradients enabled that ran through its module
    while ``collecting`` is true, until :meth:`take` hands them over.

    One tensor read by several modules the same way (separate q, k, v projections) has its ``ZᵀZ``
    computed once: the last input's moment is kept until :meth:`release`.
    """

    def __init__(self) -> None:
        self.collecting = True
        self.sums: dict[Tensor, list] = {}
        self.hooks: list = []
        self._shared: tuple | None = None  # the last input's moment: (input, version, key, ZᵀZ, rows)

    def __contains__(self, weight: Tensor) -> bool:
        return weight in self.sums

    def attach(self, model: nn.Module, columns: Callable[[nn.Module, Tensor, bool], int | None]) -> int:
        """Hook the modules of ``model`` that apply a matrix weight ``w`` with ``n = columns(module,
        w, transposed)`` input columns (None: leave it); returns how many weights were hooked.
        Skips weights already hooked, those whose module is bypassed (``nn.MultiheadAttention``
        applies ``out_proj``'s weight with ``F.linear``, never calling the module) and unsupported
        ones (grouped or transposed convolutions). A ``torch.compile``'d model's compiled code is
        dropped (``torch.compiler.reset()``), so that it is retraced with the hooks."""
        bypassed = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
        count = 0
        for module, weight, transposed in matrix_modules(model):
            if weight in self.sums or id(module) in bypassed:
                continue
            n = columns(module, weight, transposed)
            if n is None:
                continue
            attr = next(a for a in _MATRIX_ATTRS if getattr(module, a, None) is weight)
            found = _extractor(module, attr, n)
            if found is None:
                continue
            self.hooks.append(module.register_forward_pre_hook(self._make_hook(weight, *found), with_kwargs=True))
            self.sums[weight] = [None, 0]
            count += 1
        if count and _compiled(model):
            # Dynamo does not guard on module hooks: code compiled before they existed would keep
            # running without them.
            torch.compiler.reset()
        return count

    def remove_hooks(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()

    def take(self, weights: list[Tensor]) -> tuple[list[Tensor | None], list[int]]:
        """Each weight's ``ZᵀZ`` sum (None if it read nothing) and row count; both restart at zero."""
        totals = [self.sums[w][0] for w in weights]
        counts = [self.sums[w][1] for w in weights]
        for w in weights:
            self.sums[w] = [None, 0]
        return totals, counts

    def release(self) -> None:
        """Drop the last input (kept so that modules reading it share its moment)."""
        self._shared = None

    def _make_hook(self, weight: Tensor, key: tuple, source, rows):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if not (self.collecting and module.training and torch.is_grad_enabled()):
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
                    self._shared = (x, x._version, key, gram, count)  # held until release()
                acc = self.sums[weight]
                acc[0] = gram if acc[0] is None else acc[0] + gram
                acc[1] += count

        return hook

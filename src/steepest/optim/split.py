"""What each parameter of a model is: the one place that decides the matrix/AdamW split.

Every trainable parameter gets one *kind* (tied parameters are counted once, under their first
name):

* ``"matrix"``: a weight that a linear-like module applies to a vector, with its ``(out, in)``
  view. Matrix modules are ``nn.Linear``, ``nn.Conv1d/2d/3d`` (``(out, in/groups·kh·kw)``),
  ``nn.MultiheadAttention``'s input projections, Hugging Face's ``Conv1D`` (stored ``(in, out)``:
  its view is the transpose, ``transposed=True``) and what :func:`register_matrix_module` adds.
* ``"head"``: the output layer. It is ``model.get_output_embeddings()`` where that method exists
  and returns a module (Hugging Face language models: ``lm_head``, tied or not), else the last
  matrix module in registration order (``classifier``, ``score``, ``classifier.out_proj``, a
  final ``fc``), plus whatever ``head=`` names (additive; a tied weight may be named by any of
  its names).
* ``"embedding"``: the weight of an ``nn.Embedding``/``nn.EmbeddingBag`` (and so a head tied to it).
* ``"embedding-like"``: any other parameter of two or more dimensions that no matrix module
  applies as a matrix: position embeddings ``(1, N, D)``, CLS/register tokens ``(1, 1, D)``,
  relative-position tables. Flattening them to one ``1 × (N·D)`` "matrix" has no meaning.
* ``"input"``: with ``inputs="adamw"`` only, the first matrix module when no embedding is
  registered before it (a ViT patch embedding, a ResNet stem).
* ``"other"``: 1-D and scalar parameters (biases, norm gains).

Matrix optimizers get the ``"matrix"`` kind; AdamW gets every other kind (KellerJordan/Muon's
``MuonWithAuxAdam`` split: Muon for hidden weights; embeddings, the head, gains and biases to
AdamW).

Input layers. An embedding reads one-hot vectors: its natural geometry is ℓ1→RMS, whose
steepest descent updates each column on its own (what AdamW does), so embeddings always go to
AdamW. A convolution stem or a ViT patch embedding reads dense, normalised pixel patches, the
RMS→RMS geometry that Muon's orthogonalised update is steepest descent for, like any hidden
layer; the Muon CIFAR-10 speedrun (airbench94_muon) trains its first trainable convolution with
Muon. So by default (``inputs="matrix"``) such layers stay with the matrix optimizer;
``inputs="adamw"`` sends them to AdamW, and ``head=`` can send any layer there.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor, nn

__all__ = [
    "KINDS",
    "INPUT_CHOICES",
    "ParamInfo",
    "ParameterSplit",
    "register_matrix_module",
    "matrix_modules",
    "classify_parameters",
    "split_parameters",
    "matrix_view_shape",
]

KINDS = ("matrix", "head", "embedding", "embedding-like", "input", "other")
INPUT_CHOICES = ("matrix", "adamw")

# module type -> ((attribute of a weight it applies as a matrix, stored (in, out)?), ...)
_MATRIX_MODULES: dict[type, tuple[tuple[str, bool], ...]] = {
    nn.Linear: (("weight", False),),
    nn.Conv1d: (("weight", False),),
    nn.Conv2d: (("weight", False),),
    nn.Conv3d: (("weight", False),),
    nn.MultiheadAttention: (("in_proj_weight", False), ("q_proj_weight", False), ("k_proj_weight", False), ("v_proj_weight", False)),
}


def register_matrix_module(module_type: type, weights: Iterable[str] = ("weight",), *, transposed: bool = False) -> None:
    """Declare that ``module_type`` applies its ``weights`` as matrices: they become ``"matrix"``
    parameters. ``transposed=True``: stored ``(in, out)`` (``y = x @ W``), so the optimizers see
    ``Wᵀ``. Subclasses of a registered type are matrix modules too."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise ValueError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    weights = tuple(weights)
    if not weights or not all(isinstance(w, str) for w in weights):
        raise ValueError(f"weights must name the module's matrix parameters, e.g. ('weight',); got {weights!r}")
    _MATRIX_MODULES[module_type] = tuple((w, bool(transposed)) for w in weights)


def _hf_conv1d() -> type | None:
    """Hugging Face's ``Conv1D`` class when transformers is imported (no model has one otherwise)."""
    utils = sys.modules.get("transformers.pytorch_utils")
    return getattr(utils, "Conv1D", None)


def _matrix_attrs(module: nn.Module) -> tuple[tuple[str, bool], ...]:
    conv1d = _hf_conv1d()
    if conv1d is not None and isinstance(module, conv1d):
        return (("weight", True),)
    for cls in type(module).__mro__:
        if cls in _MATRIX_MODULES:
            return _MATRIX_MODULES[cls]
    return ()


def matrix_modules(model: nn.Module) -> list[tuple[nn.Module, Tensor, bool]]:
    """``(module, weight, transposed)`` for every matrix weight of ``model``, in registration order
    (a weight shared by two modules appears under each)."""
    out = []
    for module in model.modules():
        for attr, transposed in _matrix_attrs(module):
            w = getattr(module, attr, None)
            if isinstance(w, Tensor) and w.ndim >= 2:
                out.append((module, w, transposed))
    return out


def matrix_view_shape(p: Tensor, transposed: bool = False) -> tuple[int, int]:
    """``(out, in)`` of a matrix weight: ``(p.shape[0], ∏ p.shape[1:])``, or for a weight stored
    ``(in, out)`` (``transposed``) ``(p.shape[-1], ∏ p.shape[:-1])``."""
    if transposed:
        return (p.shape[-1], math.prod(p.shape[:-1]))
    return (p.shape[0], math.prod(p.shape[1:]))


@dataclass(frozen=True)
class ParamInfo:
    """One trainable parameter: its names (the first, then tied aliases), kind and matrix view."""

    name: str
    aliases: tuple[str, ...]
    param: nn.Parameter
    kind: str
    transposed: bool = False  # stored (in, out): the optimizers see the transpose
    module: nn.Module | None = None  # the matrix module that applies it (for input hooks)

    @property
    def shape(self) -> tuple[int, int] | None:
        """The ``(out, in)`` view of a matrix parameter, else None."""
        return matrix_view_shape(self.param, self.transposed) if self.kind == "matrix" else None


@dataclass
class ParameterSplit:
    """The classified parameters of a model, in ``named_parameters`` order."""

    params: list[ParamInfo]

    @property
    def matrix(self) -> list[ParamInfo]:
        return [i for i in self.params if i.kind == "matrix"]

    @property
    def other(self) -> list[ParamInfo]:
        return [i for i in self.params if i.kind != "matrix"]

    def kinds(self) -> dict[str, str]:
        """``{name: kind}``."""
        return {i.name: i.kind for i in self.params}


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under ``torch.compile``'s and DDP's wrappers, for ``get_output_embeddings``."""
    for _ in range(8):
        if hasattr(model, "get_output_embeddings"):
            return model
        inner = model._modules.get("_orig_mod") or model._modules.get("module")
        if inner is None:
            return model
        model = inner
    return model


def _output_embedding(model: nn.Module) -> nn.Module | None:
    getter = getattr(_unwrap(model), "get_output_embeddings", None)
    if not callable(getter):
        return None
    try:
        out = getter()
    except (NotImplementedError, AttributeError):
        return None
    return out if isinstance(out, nn.Module) else None


def classify_parameters(
    model: nn.Module,
    head: Iterable[nn.Parameter | nn.Module | str] | None = None,
    *,
    inputs: str = "matrix",
) -> ParameterSplit:
    """Classify ``model``'s trainable parameters (see the module docstring for the rules).

    ``head``: parameters, modules or parameter names (any name of a tied parameter) to treat as
    output layers, in addition to the detected head. ``inputs``: ``"matrix"`` (default) or
    ``"adamw"`` for the input layers that are not embeddings.
    """
    if inputs not in INPUT_CHOICES:
        raise ValueError(f"inputs must be one of {', '.join(map(repr, INPUT_CHOICES))}, got {inputs!r}")
    params, aliases = _trainable(model)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    modules = matrix_modules(model)
    matrix: dict[int, tuple[nn.Module, bool]] = {}
    for module, w, transposed in modules:
        matrix.setdefault(id(w), (module, transposed))
    heads = _detected_head(model, modules) | _named_heads(head, {n: i for i, ns in aliases.items() for n in ns})
    input_layers = _input_layer(model) if inputs == "adamw" else set()
    infos = []
    for pid, p in params.items():
        names = tuple(aliases[pid])
        module, transposed = matrix.get(pid, (None, False))
        if p.ndim < 2:
            kind = "other"
        elif pid in embeddings:
            kind = "embedding"
        elif pid in heads:
            kind = "head"
        elif module is None:
            kind = "embedding-like"
        elif pid in input_layers:
            kind = "input"
        else:
            kind = "matrix"
        infos.append(ParamInfo(names[0], names, p, kind, transposed if kind == "matrix" else False, module))
    return ParameterSplit(infos)


def _trainable(model: nn.Module) -> tuple[dict[int, nn.Parameter], dict[int, list[str]]]:
    """``model``'s trainable parameters by id, in ``named_parameters`` order, and each one's
    names (tied parameters have several)."""
    aliases: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.requires_grad:
            aliases.setdefault(id(p), []).append(name)
            params[id(p)] = p
    return params, aliases


def _detected_head(model: nn.Module, modules: list[tuple[nn.Module, Tensor, bool]]) -> set[int]:
    """The ids of the output layer's matrices: ``get_output_embeddings()``'s where the model has
    one, else those of the last matrix module with a trainable weight."""
    out_layer = _output_embedding(model)
    if out_layer is not None:
        return {id(p) for p in out_layer.parameters() if p.ndim >= 2}
    trainable = [m for m, w, _ in modules if w.requires_grad]
    if not trainable:
        return set()
    return {id(w) for m, w, _ in modules if m is trainable[-1]}


def _named_heads(head: Iterable[nn.Parameter | nn.Module | str] | None, names: dict[str, int]) -> set[int]:
    """The ids of what ``head=`` names: parameter names (any name of a tied parameter, ``names``
    maps each to its id), parameters, or modules (their parameters of two or more dimensions)."""
    heads: set[int] = set()
    for h in head or ():
        if isinstance(h, str):
            if h not in names:
                raise ValueError(f"head: no trainable parameter named {h!r}; names are e.g. {list(names)[:5]}")
            heads.add(names[h])
        elif isinstance(h, nn.Module):
            heads.update(id(p) for p in h.parameters() if p.ndim >= 2)
        elif isinstance(h, Tensor):
            heads.add(id(h))
        else:
            raise ValueError(f"head: expected parameter names, parameters or modules, got {type(h).__name__}")
    return heads


def _input_layer(model: nn.Module) -> set[int]:
    """The ids of the first matrix module's trainable matrices, unless an embedding is registered
    before it (then none): the input layer that ``inputs="adamw"`` sends to AdamW."""
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            break
        attrs = [getattr(module, a, None) for a, _ in _matrix_attrs(module)]
        attrs = [w for w in attrs if isinstance(w, Tensor) and w.ndim >= 2 and w.requires_grad]
        if attrs:
            return {id(w) for w in attrs}
    return set()


def split_parameters(
    model: nn.Module, head: Iterable[nn.Parameter | nn.Module | str] | None = None, *, inputs: str = "matrix"
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """``model``'s trainable parameters as (matrix, other) lists of ``(name, param)``, by
    :func:`classify_parameters`. Which matrices are stored transposed (HF ``Conv1D``):
    ``classify_parameters(model).matrix``'s ``transposed``."""
    split = classify_parameters(model, head, inputs=inputs)
    return [(i.name, i.param) for i in split.matrix], [(i.name, i.param) for i in split.other]

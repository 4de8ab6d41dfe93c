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
from torch.nn.utils import parametrize

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
    "matrix_blocks",
    "parametrization_gains",
    "HEAD_NAMES",
]

KINDS = ("matrix", "head", "embedding", "router", "embedding-like", "input", "other")
INPUT_CHOICES = ("matrix", "adamw")

# module type -> ((attribute of a weight it applies as a matrix, stored (in, out)?), ...)
_MATRIX_MODULES: dict[type, tuple[tuple[str, bool], ...]] = {
    nn.Linear: (("weight", False),),
    nn.Conv1d: (("weight", False),),
    nn.Conv2d: (("weight", False),),
    nn.Conv3d: (("weight", False),),
    nn.MultiheadAttention: (("in_proj_weight", False), ("q_proj_weight", False), ("k_proj_weight", False), ("v_proj_weight", False)),
    # stored (in, out/groups, k...): the map of one input position is (out·k², in), the transpose
    nn.ConvTranspose1d: (("weight", True),),
    nn.ConvTranspose2d: (("weight", True),),
    nn.ConvTranspose3d: (("weight", True),),
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


# gates per recurrent layer type: LSTM stacks i, f, g, o along its weights' rows, GRU r, z, n
_RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _matrix_attrs(module: nn.Module) -> tuple[tuple[str, bool], ...]:
    conv1d = _hf_conv1d()
    if conv1d is not None and isinstance(module, conv1d):
        return (("weight", True),)
    if isinstance(module, nn.RNNBase):  # weight_ih_l{k}, weight_hh_l{k} (and _reverse): (gates·H, in)
        return tuple((n, False) for n in module._flat_weights_names if n.startswith("weight_"))
    for cls in type(module).__mro__:
        if cls in _MATRIX_MODULES:
            return _MATRIX_MODULES[cls]
    return ()


def _expert_attrs(module: nn.Module) -> tuple[tuple[str, bool], ...]:
    """A mixture-of-experts module's stacked expert weights: its own 3-D parameters whose first
    dimension is ``module.num_experts`` (transformers' ``MixtralExperts``, ``Qwen2MoeExperts``,
    ...), stored ``(E, out, in)``, or ``(E, in, out)`` where ``module.is_transposed`` says so."""
    experts = getattr(module, "num_experts", None)
    if not isinstance(experts, int) or experts < 1:
        return ()
    transposed = bool(getattr(module, "is_transposed", False))
    return tuple((n, transposed) for n, p in module.named_parameters(recurse=False) if p.ndim == 3 and p.shape[0] == experts)


def _weight(module: nn.Module, attr: str) -> Tensor | None:
    """The parameter behind ``module.<attr>``: itself, or under a parametrization (``weight_norm``,
    ``spectral_norm``) the original of the weight's shape (weight_norm's direction ``v``)."""
    if parametrize.is_parametrized(module, attr):
        computed = getattr(module, attr)
        originals = [t for n, t in module.parametrizations[attr].named_parameters(recurse=False) if n.startswith("original")]
        return next((t for t in originals if t.shape == computed.shape), None)
    w = getattr(module, attr, None)
    return w if isinstance(w, Tensor) else None


def matrix_blocks(module: nn.Module, weight: Tensor) -> int:
    """How many independent matrices ``weight`` stacks along its first dimension: the experts of a
    mixture-of-experts weight, the groups of a grouped (or depthwise) convolution, the gates of a
    recurrent layer (LSTM 4, GRU 3), else 1."""
    if _expert_attrs(module) and weight.ndim == 3 and weight.shape[0] == module.num_experts:
        return module.num_experts
    if isinstance(module, nn.RNNBase):
        return _RNN_GATES.get(module.mode, 1)
    groups = getattr(module, "groups", 1)
    return groups if isinstance(module, nn.modules.conv._ConvNd) and groups > 1 else 1


def matrix_modules(model: nn.Module) -> list[tuple[nn.Module, Tensor, bool]]:
    """``(module, weight, transposed)`` for every matrix weight of ``model``, in registration order
    (a weight shared by two modules appears under each; a parametrized weight as its original)."""
    out = []
    for module in model.modules():
        for attr, transposed in _matrix_attrs(module) + _expert_attrs(module):
            w = _weight(module, attr)
            if w is not None and w.ndim >= 2:
                out.append((module, w, transposed))
    return out


def parametrization_gains(model: nn.Module) -> set[int]:
    """The ids of the parametrization originals that are not the matrix (``weight_norm``'s
    magnitude ``g``, shaped ``(out, 1, ...)``): gains, updated as 1-D parameters."""
    gains = set()
    for module in model.modules():
        for attr, _ in _matrix_attrs(module):
            if parametrize.is_parametrized(module, attr):
                matrix = _weight(module, attr)
                gains.update(id(t) for t in module.parametrizations[attr].parameters(recurse=False) if t is not matrix)
    return gains


def matrix_view_shape(p: Tensor, transposed: bool = False, blocks: int = 1) -> tuple[int, int]:
    """``(out, in)`` of one of the ``blocks`` matrices of a matrix weight (its rows split into
    ``blocks`` equal parts; experts: one index of the first dimension each):
    ``(p.shape[0], ∏ p.shape[1:])``, or for a weight stored ``(in, out…)`` (``transposed``: HF
    ``Conv1D``, ``ConvTranspose``) ``(∏ p.shape[1:], p.shape[0])``."""
    if blocks > 1:
        p = p[0] if blocks == p.shape[0] else p[: p.shape[0] // blocks]
        if p.ndim < 2:
            return (1, p.numel()) if not transposed else (p.numel(), 1)
    if transposed:
        return (math.prod(p.shape[1:]), p.shape[0])
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
    blocks: int = 1  # independent matrices along the first dimension (experts, conv groups)

    @property
    def shape(self) -> tuple[int, int] | None:
        """The ``(out, in)`` view of a matrix parameter (of each of its blocks), else None."""
        return matrix_view_shape(self.param, self.transposed, self.blocks) if self.kind == "matrix" else None


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
    gains = parametrization_gains(model) | _expert_biases(model)
    routers = _router_weights(model)
    infos = []
    for pid, p in params.items():
        names = tuple(aliases[pid])
        module, transposed = matrix.get(pid, (None, False))
        if p.ndim < 2 or pid in gains:
            kind = "other"
        elif pid in embeddings:
            kind = "embedding"
        elif pid in heads:
            kind = "head"
        elif pid in routers:
            kind = "router"
        elif module is None:
            kind = "embedding-like"
        elif pid in input_layers:
            kind = "input"
        else:
            kind = "matrix"
        matrix_kind = kind == "matrix"
        blocks = matrix_blocks(module, p) if matrix_kind else 1
        infos.append(ParamInfo(names[0], names, p, kind, transposed if matrix_kind else False, module, blocks))
    return ParameterSplit(infos)


def _router_weights(model: nn.Module) -> set[int]:
    """The ids of mixture-of-experts routers' ``(E, d)`` weights (a module with ``num_experts`` and
    ``top_k`` and no experts of its own: transformers' ``MixtralTopKRouter``, ...). A router's
    output is the experts' logits, read by a softmax: an output layer, so it goes to AdamW."""
    out = set()
    for module in model.modules():
        experts, top_k = getattr(module, "num_experts", None), getattr(module, "top_k", None)
        if isinstance(experts, int) and isinstance(top_k, int) and not _expert_attrs(module):
            out.update(id(p) for p in module.parameters(recurse=False) if p.ndim == 2 and p.shape[0] == experts)
    return out


def _expert_biases(model: nn.Module) -> set[int]:
    """The ids of a mixture-of-experts module's 2-D ``(E, out)`` biases: one bias per expert."""
    out = set()
    for module in model.modules():
        if _expert_attrs(module):
            out.update(id(p) for p in module.parameters(recurse=False) if p.ndim == 2 and p.shape[0] == module.num_experts)
    return out


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


# Output layers by their attribute name (the last component of the module's name): the secondary
# heads of Hugging Face models (BERT's next-sentence ``seq_relationship``, GPT2DoubleHeads'
# ``multiple_choice_head.summary``, question answering's ``qa_outputs``), classifiers, and CLIP's
# two tower projections into the shared embedding space (both, never one of them).
HEAD_NAMES = frozenset({"lm_head", "classifier", "score", "qa_outputs", "seq_relationship", "summary", "head",
                        "text_projection", "visual_projection"})


def _detected_head(model: nn.Module, modules: list[tuple[nn.Module, Tensor, bool]]) -> set[int]:
    """The ids of the output layers' matrices: ``get_output_embeddings()``'s where the model has
    one, and every matrix module named in :data:`HEAD_NAMES`; when neither exists, those of the
    last matrix module with a trainable weight."""
    heads: set[int] = set()
    out_layer = _output_embedding(model)
    if out_layer is not None:
        heads.update(id(p) for p in out_layer.parameters() if p.ndim >= 2)
    named = {id(m) for n, m in model.named_modules() if n.rpartition(".")[2] in HEAD_NAMES}
    heads.update(id(w) for m, w, _ in modules if id(m) in named)
    if heads:
        return heads
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

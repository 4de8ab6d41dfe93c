"""Bookkeeping shared by the matrix optimizers; the math lives in :mod:`steepest.directions`.

Each step, per param group:

1. gradients are checked for NaN/Inf (``nonfinite="raise"|"skip"|"ignore"``),
2. optionally transformed (Newton-Muon's right preconditioning),
3. folded into an EMA momentum ``B ← μB + (1−μ)G`` (Nesterov: ``M = (1−μ)G + μB``, else ``M = B``),
4. grouped by (matrix shape, dtype, device) so that each group's directions are one batched call
   ``D = direction(M)`` on a ``(k, m, n)`` stack (conv weights are viewed as ``(out, in·kh·kw)``),
5. applied with decoupled weight decay: ``W ← (1 − lr·wd)·W − lr·s(m, n)·D`` (with
   ``cautious_weight_decay=True`` only where ``sign(D) = sign(W)``).

No step reads a device value back to the host except ``nonfinite="raise"`` (one read per step)
and what the subclasses document.

On a CPU in one process, steps 3–5 run batch by batch (:meth:`~MatrixOptimizer.local_units`:
Muon's one-at-a-time matrices one by one): a batch's ``M`` is formed just before its ``D``, and
``D`` applied right after it, so that the buffers kept between steps (:meth:`~MatrixOptimizer.workspace`)
hold one batch's results, not every matrix's; the values are those of steps 3–5 run in turn.

Where step 4's directions are computed is the optimizer's :attr:`~MatrixOptimizer.executor`
(:mod:`steepest.execution`): this process (:class:`~steepest.execution.LocalExecutor`), or, when a
process group with several ranks is initialised, split across the ranks (:mod:`steepest.distributed`,
chosen on the first step). The optimizer talks to it only through the hooks below; the
executor knows no optimizer. DTensor (FSDP2)
parameters are updated through their local shards.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..directions.collectives import RowCollectives
from ..execution import BlockState, Bucket, Executor, LocalExecutor, LowRank, executor_for, local_tensor
from .split import matrix_view_shape
from ..validation import check_bool, check_choice, check_int, check_number

__all__ = ["MatrixOptimizer", "Bucket", "LocalExecutor", "local_tensor", "NonFiniteGradientError", "NONFINITE_MODES", "check_hyperparameter", "restore_state_dtypes"]

NONFINITE_MODES = ("raise", "skip", "ignore")
WORKSPACE_ALIGNMENT = 64  # bytes: the alignment of torch's CPU allocations, kept by every workspace view


class NonFiniteGradientError(ValueError):
    """A gradient held NaN or Inf (raised by ``nonfinite="raise"``)."""


def check_hyperparameter(name: str, value: object, *, low: float = 0.0, high: float | None = None, high_open: bool = False) -> None:
    """``low ≤ value (≤ or <) high``; a 1-element tensor is accepted for ``lr`` only
    (:func:`steepest.validation.check_number`)."""
    check_number(name, value, low=low, high=high, high_open=high_open)


def restore_state_dtypes(optimizer: Optimizer, state_dict: dict, follow_param: tuple[str, ...] = ()) -> None:
    """After ``optimizer.load_state_dict(state_dict)``: give every loaded state tensor whose dtype
    torch changed its saved dtype back, copied from the saved tensor itself (no round trip through
    the parameter's dtype), on the parameter's device; the keys in ``follow_param`` keep the
    parameter's dtype that torch gave them (a float32 checkpoint resumed on a bf16 model)."""
    saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for saved_id, p in zip(saved_ids, params):
        saved = state_dict["state"].get(saved_id)
        if not saved or p not in optimizer.state:
            continue
        state = optimizer.state[p]
        for key, value in saved.items():
            if key in follow_param:
                continue
            if isinstance(value, Tensor) and key in state and state[key].dtype != value.dtype:
                state[key] = value.to(device=state[key].device, copy=True)


class MatrixOptimizer(Optimizer):
    """Base class: see the module docstring. Subclasses implement :meth:`direction`."""

    min_ndim = 2
    elementwise = False  # True: direction() acts entry by entry (computed locally, even distributed)
    prepares_with_gradients = False  # True: prepare_directions reads bucket.grads (row shards gather them whole first)
    # on a CPU in one process, step unit by unit (_step_units), so that the kept buffers are one unit's;
    # False: every momentum and direction first, then every update (the distributed executors' order)
    stream_cpu_steps = True

    # state that lives in the parameter's dtype (a load casts it, as torch does); all other state
    # tensors keep the dtype they were saved with (float32 statistics of a bf16 model, int ranks)
    param_dtype_state: tuple[str, ...] = ("momentum_buffer",)

    def __init__(self, params, defaults: dict) -> None:
        self.validate_group(dict(defaults))  # bad hyperparameters first, as torch's optimizers check them
        super().__init__(params, defaults)

    # --- checkpoints -------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict) -> None:
        """As :meth:`torch.optim.Optimizer.load_state_dict`, but every state tensor except
        :attr:`param_dtype_state` (the momentum, which follows the parameter's dtype, so a float32
        checkpoint resumes on a bf16 model) keeps the dtype it was saved with, and a plain-number
        ``step`` becomes a tensor. torch casts floating-point state to its parameter's dtype, which would
        turn a bf16 model's float32 statistics (Shampoo's ``L``, Neon's basis, Newton-Muon's
        moments) into bf16 and its integer ranks into bf16; here they are copied again from the
        saved tensors, so a bf16 resume is as exact as a float32 one."""
        super().load_state_dict(state_dict)
        restore_state_dtypes(self, state_dict, self.param_dtype_state)
        for state in self.state.values():  # a plain-number step (older checkpoints, other tools)
            if "step" in state and not isinstance(state["step"], Tensor):
                state["step"] = torch.tensor(float(state["step"]))

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
            blocks = group.get("matrix_blocks", 1)
            if blocks > 1 and (p.ndim < 2 or p.shape[0] % blocks):
                raise ValueError(
                    f"{type(self).__name__}: parameter {name} of shape {tuple(p.shape)} cannot hold matrix_blocks={blocks} "
                    "matrices along its first dimension; use a divisor of its first dimension, or 1"
                )

    def validate_group(self, group: dict) -> None:
        """Check the hyperparameters of one param group; subclasses extend it."""
        check_hyperparameter("lr", group["lr"])
        check_hyperparameter("momentum", group["momentum"], high=1.0, high_open=True)
        check_hyperparameter("weight_decay", group["weight_decay"])
        check_bool(group.get("compile", False), "compile")
        check_choice(group["nonfinite"], "nonfinite", NONFINITE_MODES)
        group.setdefault("cautious_weight_decay", False)  # groups and checkpoints from before the option
        check_bool(group["cautious_weight_decay"], "cautious_weight_decay")
        check_int(group.get("matrix_blocks", 1), "matrix_blocks")

    @staticmethod
    def _param_name(group: dict, i: int) -> str:
        names = group.get("param_names")
        if names is not None and i < len(names):
            return repr(names[i])
        return f"#{i} of its param group"

    # --- hooks for subclasses ----------------------------------------------------------------
    def direction(self, group: dict, bucket: Bucket) -> Tensor:
        """``D`` of shape ``(k, m, n)`` for the bucket's momenta (``bucket.stack()``); may read and
        write the matrices' states (``bucket.states``). Under a distributed executor ``bucket`` is
        one rank's share of the batch (``bucket.whole`` is the batch) and holds no gradients."""
        raise NotImplementedError

    def prepare_directions(self, group: dict, bucket: Bucket) -> None:
        """Work on the whole batch that every rank repeats before the direction work is split:
        state that needs the gradients (``bucket.grads``, whole matrices), e.g. Shampoo's statistics."""

    def direction_state(self, group: dict, bucket: Bucket) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Per-matrix state entries that :meth:`direction` writes this step, as ``{key: (shape,
        dtype)}``; a distributed executor copies them from the matrix's owner to every rank."""
        return {}

    def directions_done(self, group: dict, bucket: Bucket) -> None:
        """Called once every matrix of the batch has its direction and state (on every rank)."""

    def direction_factors(self, group: dict, bucket: Bucket) -> tuple[int, torch.dtype] | None:
        """``(r, dtype)`` when :meth:`direction` returns the batch's directions as factors, a
        :class:`~steepest.execution.LowRank` of ``(k, m, r)`` and ``(k, n, r)`` tensors of that
        dtype, on every rank (known before it runs); ``None`` (the default) for a dense ``(k, m, n)``
        tensor. A distributed executor then sends ``(m + n)·r`` numbers per matrix instead of ``m·n``."""
        return None

    def row_shard_direction(self, group: dict, bucket: Bucket) -> Callable[[Tensor, RowCollectives], Tensor] | None:
        """How to compute the batch's directions when its matrices are split by rows across ranks
        (FSDP2's ``Shard(0)``) without gathering them, or ``None`` (the default): the executor then
        moves whole matrices to the ranks that compute them.

        The function takes this rank's rows of the momenta (``(k, rows, n)``) and the collectives
        that combine row blocks (:class:`~steepest.directions.collectives.RowCollectives`), writes
        the direction state of ``bucket`` (the same on every rank) and returns this rank's rows of
        ``D``. The executor decides per batch whether to use it (``DistributedExecutor(row_shards=...)``)."""
        return None

    def direction_flops(self, group: dict, shape: tuple[int, int]) -> float:
        """A FLOP estimate of one ``(m, n)`` matrix's direction, used only to balance the split of
        the work across ranks; subclasses state their own. Default: ``m·n`` for an element-wise
        direction, else ``m·n·min(m, n)`` (one dense factorisation's order)."""
        m, n = shape
        return float(m * n) if self.elementwise else float(m * n * min(m, n))

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
        """``(out, in)`` of each of ``p``'s matrices (:meth:`matrix_blocks`): ``(p.shape[0], ∏ p.shape[1:])``
        of a block; for a parameter stored ``(in, out…)`` (:meth:`is_transposed`) ``(∏ p.shape[1:], p.shape[0])``;
        ``(1, numel)`` below 2-D."""
        if p.ndim < 2:
            return (1, p.numel())
        return matrix_view_shape(p, self.is_transposed(p), self.matrix_blocks(p))

    def matrix_blocks(self, p: Tensor) -> int:
        """How many independent matrices ``p`` stacks along its first dimension: its param group's
        ``matrix_blocks`` (default 1; :func:`steepest.build_optimizer` sets the number of experts of
        a mixture-of-experts weight, or of groups of a grouped convolution). Each block is updated
        as its own matrix, in the same batched call as the others of its shape."""
        if self.elementwise:
            return 1
        key = tuple(id(g) for g in self.param_groups)
        cache = self.__dict__.get("_blocks_ids")
        if cache is None or cache[0] != key:
            cache = self._blocks_ids = (key, {id(q): g.get("matrix_blocks", 1) for g in self.param_groups for q in g["params"]})
        return cache[1].get(id(p), 1)

    def is_transposed(self, p: Tensor) -> bool:
        """Whether ``p`` is stored ``(in, out)`` (``y = x @ W``, HF's ``Conv1D``): its param group
        has ``transposed=True`` (:func:`steepest.build_optimizer` puts such weights in such a
        group). The optimizer then works on ``Wᵀ`` (shape, scale, preconditioners) and writes the
        update back transposed. Element-wise optimizers ignore it (their update is the same)."""
        if self.elementwise:
            return False
        key = tuple(id(g) for g in self.param_groups)
        cache = self.__dict__.get("_transposed_ids")
        if cache is None or cache[0] != key:  # param groups added or replaced (load_state_dict)
            cache = self._transposed_ids = (key, {id(q) for g in self.param_groups if g.get("transposed") for q in g["params"]})
        return id(p) in cache[1]

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
        self.step_done()
        return loss

    def step_done(self) -> None:
        """Called at the end of every :meth:`step` (Newton-Muon schedules its input collection
        here). A hook, not an override of ``step``: torch wraps each class's ``step`` for the step
        hooks, and a subclass ``step`` calling ``super().step()`` would run them twice."""

    def _gather(self, group: dict) -> tuple[list[Tensor], list[Tensor], list[dict], list[str]]:
        """The group's stepping parameters (DTensors stay DTensors), their gradients (local shards),
        states and names. A gradient that is ``None`` here but not on another rank counts as zero,
        so that every rank steps the same matrices."""
        params, grads, states, names = [], [], [], []
        present = self.executor.participating(self, group)
        for i, p in enumerate(group["params"]):
            if not present[i] or p.numel() == 0:  # an empty weight has nothing to update
                continue
            g = p.grad if p.grad is not None else torch.zeros_like(p)
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
            grads.append(local_tensor(g))
            states.append(state)
            names.append(name)
        return params, grads, states, names

    def _nonfinite_flag(self, group: dict, grads: list[Tensor], names: list[str]) -> Tensor | None:
        mode = group["nonfinite"]
        if mode == "ignore":
            return None
        # one pass per gradient for its smallest and largest entries (NaN propagates into both, ±Inf
        # shows in one): several times faster on CPU than an inf-norm (|g|, then a max)
        zero = grads[0].new_zeros((), dtype=torch.float32)
        extremes = [e.to(torch.float32) for g in grads for e in (torch.aminmax(g) if g.numel() else (zero, zero))]  # a shard may hold no rows
        bad = ~torch.isfinite(torch.stack(extremes).view(-1, 2)).all(dim=1)
        bad = self.executor.any_across_ranks(bad)  # shards of one matrix live on several ranks
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
        if self.stream_cpu_steps and grads[0].device.type == "cpu" and isinstance(self.executor, LocalExecutor):
            self._step_units(group, params, grads, states, names, skip)
        else:
            momenta = self.update_momentum(group, grads, states, skip)
            buckets = self._buckets(params, grads, momenta, states, names, skip)
            for bucket, D in zip(buckets, self.executor.directions(self, group, buckets)):
                if skip is not None:
                    D = D.masked_fill(skip, 0)
                self._apply(group, bucket, D, skip)
        torch._foreach_add_([s["step"] for s in states], 1.0)

    def _step_units(self, group: dict, params: list[Tensor], grads: list[Tensor], states: list[dict], names: list[str], skip: Tensor | None) -> None:
        """The CPU step in this process, one unit (:meth:`local_units`) after another: the unit's
        momentum ``M`` is formed just before its direction, and the direction applied right after
        it, so that one momentum workspace and one direction workspace (:meth:`workspace`) serve
        every unit. The same values as forming every ``M`` and every ``D`` first: momentum updates
        act entry by entry, and no direction reads a weight."""
        self._streaming = True
        try:
            for bucket in self._buckets(params, grads, grads, states, names, skip):  # momenta: set per unit
                for unit in self.local_units(group, bucket):
                    unit.momenta = self.update_momentum(group, unit.grads, unit.states, skip)
                    (D,) = self.executor.directions(self, group, [unit])
                    if skip is not None:
                        D = D.masked_fill(skip, 0)
                    self._apply(group, unit, D, skip)
        finally:
            self._streaming = False

    def local_units(self, group: dict, bucket: Bucket) -> list[Bucket]:
        """How the single-process CPU step splits a batch into units that are computed and applied
        one after another (:meth:`_step_units`): the batch itself by default. Split it only where a
        unit's direction is the same arithmetic as within the batch (Muon's one-at-a-time matrices:
        ``bucket.singles()``)."""
        return [bucket]

    @property
    def executor(self) -> Executor:
        """Where the bucket directions are computed: here, or split across ranks. Chosen on first
        use by :func:`steepest.execution.executor_for`; assign ``LocalExecutor()`` to opt out."""
        executor = getattr(self, "_executor", None)
        if executor is None:
            executor = self._executor = executor_for(self)
        return executor

    @executor.setter
    def executor(self, value: Executor) -> None:
        self._executor = value

    def update_momentum(self, group: dict, grads: list[Tensor], states: list[dict], skip: Tensor | None) -> list[Tensor]:
        """Fold ``grads`` into the momentum buffers and return the ``M`` that directions are computed
        from: the EMA ``B ← μB + (1−μ)G`` (not on skipped steps), ``M = (1−μ)G + μB`` with Nesterov,
        else ``B``; ``grads`` themselves when μ = 0. A hook: optimizers with their own rule override
        it (Dion's and Neon's error feedback: ``B ← B + G``-style accumulation)."""
        mu = group["momentum"]
        if mu == 0:
            return grads
        bufs = [local_tensor(s["momentum_buffer"]) for s in states]
        weight = 1 - mu if skip is None else (1 - mu) * (~skip).to(torch.float32)
        torch._foreach_lerp_(bufs, grads, weight)
        if not group["nesterov"]:
            return bufs
        if bufs[0].device.type != "cpu":
            return torch._foreach_lerp(grads, bufs, mu)
        return [torch.lerp(g, b, mu, out=out) for g, b, out in zip(grads, bufs, self._nesterov_outputs(group, grads, bufs))]

    def _nesterov_outputs(self, group: dict, grads: list[Tensor], bufs: list[Tensor]) -> list[Tensor]:
        """Where the CPU Nesterov momenta go: views of one :meth:`workspace` per dtype, shared by the
        units of a streamed step (:meth:`_step_units`: one unit's momenta at a time), else one per
        param group (its momenta live until its directions are computed, and the modular
        optimizer's dual step keeps every group's)."""
        group_index = next((i for i, g in enumerate(self.param_groups) if g is group), -1)
        name = ("nesterov",) if self.__dict__.get("_streaming") else ("nesterov", group_index)
        dtypes = [torch.promote_types(g.dtype, b.dtype) for g, b in zip(grads, bufs)]  # on dtypes: no graph break
        out: list[Tensor] = [bufs[0]] * len(bufs)
        for dtype in dict.fromkeys(dtypes):
            idx = [i for i, d in enumerate(dtypes) if d == dtype]
            for i, view in zip(idx, self.workspace(name, [bufs[i].shape for i in idx], dtype, bufs[0].device)):
                out[i] = view
        return out

    def release_buffers(self) -> None:
        """Free the CPU buffers that :meth:`scratch` keeps between steps (the next step allocates
        them again), e.g. before evaluating a large model on a memory-tight machine."""
        self.__dict__.pop("_scratch", None)

    def direction_buffer(self, bucket: Bucket, dtype: torch.dtype) -> Tensor:
        """A kept CPU buffer for the bucket's ``(k, m, n)`` direction: in a streamed step
        (:meth:`_step_units`, each direction applied before the next is computed) one
        :meth:`workspace` for every bucket; otherwise one :meth:`scratch` buffer per bucket (keyed by
        its first parameter: the directions of all buckets of a group live until they are applied)."""
        shape = (len(bucket.momenta), *bucket.shape)
        device = bucket.momenta[0].device if bucket.momenta else torch.device("cpu")
        if self.__dict__.get("_streaming"):
            return self.workspace(("direction",), [shape], dtype, device)[0]
        return self.scratch(("direction", *bucket.matrix_keys()[:1]), shape, dtype, device)

    def workspace(self, name: tuple, shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        """Uninitialised tensors of ``shapes`` for results that are used up before the next request
        of the same ``name``: on a CPU, views of one flat buffer per ``(name, dtype)``, kept between
        steps and grown to the largest request (so the kept bytes are the largest request's, whatever
        the number of requests), each view starting at a multiple of 64 bytes as a fresh tensor
        does; elsewhere new tensors. A request overwrites the previous request's values."""
        device = torch.device(device)
        if device.type != "cpu":
            return [torch.empty(s, dtype=dtype, device=device) for s in shapes]
        align = max(1, WORKSPACE_ALIGNMENT // torch.empty((), dtype=dtype).element_size())
        starts, total = [], 0
        for s in shapes:
            starts.append(total)
            total += -(-math.prod(s) // align) * align
        cache = self.__dict__.setdefault("_scratch", {})
        key = (*name, dtype)  # a scratch key never ends with a dtype
        flat = cache.get(key)
        if flat is None or flat.numel() < total:
            cache.pop(key, None)  # free the smaller one before allocating its replacement
            flat = cache[key] = torch.empty(total, dtype=dtype, device=device)
        return [flat[a : a + math.prod(s)].view(s) for a, s in zip(starts, shapes)]

    def scratch(self, key: tuple, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised buffer for a result used within this step only. On a CPU it is kept
        between steps (one per ``key``; replaced when the shape or dtype changes): a fresh large
        allocation is paged in again on every step (docs/performance.md). Elsewhere a new tensor
        (CUDA's caching allocator already reuses memory). Never keep it past the step."""
        device = torch.device(device)
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        cache = self.__dict__.setdefault("_scratch", {})
        buf = cache.get(key)
        if buf is None or tuple(buf.shape) != tuple(shape) or buf.dtype != dtype:
            buf = cache[key] = torch.empty(shape, dtype=dtype, device=device)
        return buf

    def _buckets(self, params, grads, momenta, states, names, skip: Tensor | None) -> list[Bucket]:
        buckets: dict[tuple, Bucket] = {}
        for p, g, m, s, n in zip(params, grads, momenta, states, names):
            shape = self.matrix_shape(p)  # a DTensor's global shape; its layout keeps it apart
            layout = (p.device_mesh, tuple(p.placements)) if hasattr(p, "placements") else None
            transposed, blocks = self.is_transposed(p), self.matrix_blocks(p)
            if (transposed or blocks > 1) and layout is not None:
                what = "stored (in, out) (transposed=True)" if transposed else f"a stack of {blocks} matrices (matrix_blocks={blocks})"
                raise NotImplementedError(
                    f"{type(self).__name__}: parameter {n} is {what} and sharded as a DTensor, which is not supported; "
                    "shard only (out, in) weights, or keep this one replicated"
                )
            key = (shape, p.dtype, p.device, layout, transposed)
            if key not in buckets:
                buckets[key] = Bucket(shape, [], [], [], [], [], transposed=transposed, skip=skip)
            b = buckets[key]
            for entry in _blocks_of(p, g, m, s, n, blocks):
                for column, value in zip((b.params, b.grads, b.momenta, b.states, b.names), entry):
                    column.append(value)
        return list(buckets.values())

    def _apply_low_rank(self, group: dict, bucket: Bucket, params: list[Tensor], D: LowRank, lr, wd, skip: Tensor | None) -> bool:
        """``W ← (1 − lr·wd)·W − lr·s·L·Rᵀ`` as a rank-``r`` update of each weight (``addr_`` /
        ``addmm_``): two passes over ``W`` where a dense direction takes five (write ``D``, then read
        ``W`` and ``D`` and write ``W``). False (nothing done) where a weight has no matrix view, or
        where the factors' precision is not the weights' (bf16 weights, float32 factors)."""
        views = [_stored_matrix(p, bucket.transposed) for p in params]
        if any(v is None for v in views) or params[0].dtype != D.left.dtype:
            return False  # no matrix view; or low-precision weights, which add the float32-formed D rounded once
        if wd != 0:
            decay = 1 - lr * wd
            if skip is not None:
                decay = torch.where(skip, 1.0, decay)
            torch._foreach_mul_(params, decay)
        coef = -lr * self.lr_scale(group, bucket.shape)  # on the m×r factor (a tensor lr or skip flag too)
        left = D.left * (coef if skip is None else torch.where(skip, 0.0, coef))
        for W, l, r in zip(views, left.unbind(0), D.right.unbind(0)):
            if bucket.transposed:
                l, r = r, l  # stored (in, out): Wᵀ ← Wᵀ + R·Lᵀ
            l, r = l.contiguous(), r.contiguous()  # m + n numbers: one kernel whatever the factors' strides
            if l.shape[-1] == 1:
                W.addr_(l[:, 0], r[:, 0])
            else:
                W.addmm_(l, r.mT)
        return True

    def _apply(self, group: dict, bucket: Bucket, D: Tensor, skip: Tensor | None) -> None:
        """``W ← W − lr·wd·W − lr·s·D`` (cautious: ``W ← W − lr·wd·[sign D = sign W]·W − lr·s·D``,
        decaying only the entries that the update also moves towards zero; Chen et al. 2025,
        modded-nanogpt record #43); a skipped step changes nothing."""
        lr, wd = scalar_lr(group), group["weight_decay"]
        params = [local_tensor(p) for p in bucket.params]
        if isinstance(D, LowRank):
            if not (wd != 0 and group["cautious_weight_decay"]) and self._apply_low_rank(group, bucket, params, D, lr, wd, skip):
                return
            D = D.dense().to(params[0].dtype)
        if bucket.transposed:
            updates = [d.mT.reshape(p.shape) for d, p in zip(D.unbind(0), params)]
        else:
            updates = [d.view(p.shape) for d, p in zip(D.unbind(0), params)]
        if wd != 0 and group["cautious_weight_decay"]:
            _cautious_decay(params, updates, lr * wd, skip)
        elif wd != 0:
            decay = 1 - lr * wd
            if skip is not None:
                decay = torch.where(skip, 1.0, decay)
            torch._foreach_mul_(params, decay)
        scale = self.lr_scale(group, bucket.shape)
        if isinstance(lr, Tensor):
            torch._foreach_add_(params, torch._foreach_mul(updates, -lr * scale))
        else:
            torch._foreach_add_(params, updates, alpha=-(lr * scale))


def _stored_matrix(p: Tensor, transposed: bool) -> Tensor | None:
    """A view of ``p`` as the matrix it stores, ``(out, in)`` (for a transposed layout ``(in, out)``:
    its rows), or None where its strides allow no such view (channels_last)."""
    try:
        return p.view(p.shape[0], -1) if p.ndim != 2 else p
    except RuntimeError:
        return None


def _blocks_of(p: Tensor, g: Tensor, m: Tensor, state: dict, name: str, blocks: int) -> list[tuple]:
    """``(param, grad, momentum, state, name)`` of each of ``p``'s ``blocks`` matrices: views of
    its first dimension (one index per block when there are as many blocks as rows, as for
    experts), so that in-place updates reach ``p``, and a :class:`~steepest.execution.BlockState`."""
    if blocks == 1:
        return [(p, g, m, state, name)]
    rows = p.shape[0] // blocks
    part = (lambda t, e: t.select(0, e)) if rows == 1 and p.ndim == 3 else (lambda t, e: t.narrow(0, e * rows, rows))
    deleted: dict = {}
    return [(part(p, e), part(g, e), part(m, e), BlockState(state, e, blocks, part, deleted), f"{name}[{e}]") for e in range(blocks)]


def scalar_lr(group: dict) -> float | Tensor:
    """The group's lr as a float or a 0-d tensor (a view of a ``(1,)`` or ``(1, 1)`` lr tensor, so
    that a scheduler's in-place writes still reach it)."""
    lr = group["lr"]
    return lr.reshape(()) if isinstance(lr, Tensor) and lr.ndim else lr


def _cautious_decay(params: list[Tensor], updates: list[Tensor], rate: float | Tensor, skip: Tensor | None) -> None:
    """``W ← W − rate·[sign(D) = sign(W)]·W`` for each parameter ``W`` and its direction ``D``."""
    masked = [torch.where(torch.sign(d) == torch.sign(p), p, 0) for p, d in zip(params, updates)]
    if skip is not None:
        rate = torch.where(skip, 0.0, rate)
    if isinstance(rate, Tensor):
        torch._foreach_add_(params, torch._foreach_mul(masked, -rate))
    else:
        torch._foreach_add_(params, masked, alpha=-rate)

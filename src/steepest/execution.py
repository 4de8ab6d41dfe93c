"""The seam between the optimizers and where their directions are computed.

:class:`Bucket` (same-shape matrices of one param group, one batched call), the
:class:`Executor` protocol, the single-process :class:`LocalExecutor` and :func:`executor_for`
live here, so that :mod:`steepest.optim` and :mod:`steepest.distributed` both import this module
and neither imports the other: the optimizers know no ranks, the executors no optimizer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

__all__ = ["Bucket", "BlockState", "LowRank", "dense", "Executor", "LocalExecutor", "local_tensor", "executor_for", "shard_row_start"]


class LowRank(NamedTuple):
    """A batch of directions in factored form, ``D = left·rightᵀ`` (``left (k, m, r)``, ``right
    (k, n, r)``, in the iteration's precision): what the low-rank optimizers' ``direction`` may
    return (Neon's ``σ₁u₁v₁ᵀ``, Dion's ``P Q'ᵀ``), so that the step adds it as a rank-``r`` update of each weight instead of
    forming and reading an ``m×n`` direction. The distributed executors send the factors between
    ranks where the optimizer announces them (``direction_factors``), else :func:`dense` ones."""

    left: Tensor
    right: Tensor

    def dense(self) -> Tensor:
        if self.left.shape[-1] == 1:  # a K = 1 matmul is several times slower than a broadcast product on CPU BLAS
            return self.left * self.right.mT
        return self.left @ self.right.mT

    def masked_fill(self, mask: Tensor, value: float) -> "LowRank":
        return LowRank(self.left.masked_fill(mask, value), self.right)


def dense(D: "Tensor | LowRank") -> Tensor:
    """``D`` as a ``(k, m, n)`` tensor."""
    return D.dense() if isinstance(D, LowRank) else D


def _back_to_back(matrices: list[Tensor]) -> bool:
    """Whether same-shape, same-dtype ``matrices`` are contiguous and consecutive in one storage
    (so that one ``(k, m, n)`` view covers them all); under ``torch.compile`` always False (Dynamo
    cannot trace storage pointers, and the compiled graph plans its own buffers)."""
    if torch.compiler.is_compiling():
        return False
    first = matrices[0]
    size = first.numel() * first.element_size()
    storage = first.untyped_storage().data_ptr()
    return all(
        t.is_contiguous() and t.dtype == first.dtype and t.untyped_storage().data_ptr() == storage and t.data_ptr() == first.data_ptr() + i * size
        for i, t in enumerate(matrices)
    )


@dataclass
class Bucket:
    """Same-shape matrices of one param group, updated by one batched call."""

    shape: tuple[int, int]
    params: list[Tensor]
    grads: list[Tensor]
    momenta: list[Tensor]
    states: list[dict]
    names: list[str]
    batch: "Bucket | None" = None  # the whole same-shape batch, when this bucket is one rank's share of it
    transposed: bool = False  # the parameters are stored (in, out) (HF Conv1D): ``shape`` is their transpose's
    skip: Tensor | None = None  # this step's device flag: skipped for non-finite gradients (nonfinite="skip")

    def matrix(self, t: Tensor) -> Tensor:
        """``t`` (a parameter-shaped tensor: momentum, gradient) as its ``(out, in)`` matrix:
        reshaped, or for a transposed batch (the whole batch's flag: a rank's share inherits it)
        reshaped and transposed; a row shard (FSDP2, never transposed) as its ``(rows, in)`` rows.
        A view only where the layout allows one (not for channels_last conv weights): write
        results back with :meth:`write_matrix`, never in place through this."""
        if t.numel() != self.shape[0] * self.shape[1]:
            return t.reshape(t.shape[0], self.shape[1])
        if self.whole.transposed:
            return t.reshape(self.shape[1], self.shape[0]).mT
        return t.reshape(self.shape)

    def write_matrix(self, t: Tensor, X: Tensor) -> None:
        """Copy the ``(out, in)`` matrix (or row block) ``X`` into the parameter-shaped ``t``,
        whatever ``t``'s strides (channels_last, non-contiguous): the inverse of :meth:`matrix`."""
        if self.whole.transposed and t.numel() == X.numel() == self.shape[0] * self.shape[1]:
            X = X.mT
        t.copy_(X.reshape(t.shape))

    @property
    def whole(self) -> "Bucket":
        """The whole batch: per-batch decisions (Neon's block width) are taken on it."""
        return self if self.batch is None else self.batch

    def stack(self, tensors: list[Tensor] | None = None, dtype: torch.dtype | None = None, scratch: Callable | None = None) -> Tensor:
        """The momenta (or ``tensors``) as one ``(k, m, n)`` stack of :meth:`matrix` views, in
        ``dtype`` if given (the cast and the stacking in one copy), written into
        ``scratch(shape, dtype)`` if given (e.g. a :meth:`MatrixOptimizer.scratch` buffer). A single
        matrix already in ``dtype``, and matrices that lie back to back in one buffer (the CPU
        step's Nesterov momenta, views of one workspace), come back as a view, without a copy: do
        not modify the stack in place."""
        tensors = self.momenta if tensors is None else tensors
        dtype = tensors[0].dtype if dtype is None else dtype
        if len(tensors) == 1:
            return self.matrix(tensors[0]).to(dtype).unsqueeze(0)
        shape = (len(tensors), *self.shape)
        if dtype == tensors[0].dtype and _back_to_back([self.matrix(t) for t in tensors]):
            return self.matrix(tensors[0]).as_strided(shape, (shape[1] * shape[2], shape[2], 1))
        out = scratch(shape, dtype) if scratch is not None else torch.empty(shape, dtype=dtype, device=tensors[0].device)
        for slot, t in zip(out.unbind(0), tensors):
            slot.copy_(self.matrix(t))
        return out

    def matrix_keys(self) -> tuple:
        """A stable identity of each matrix across steps (a block of a stacked weight is a fresh view
        every step; its parameter's state dict and its index are not)."""
        return tuple((id(s.state), s.index) if isinstance(s, BlockState) else (id(s), -1) for s in self.states)

    def singles(self) -> list["Bucket"]:
        """Each matrix as a bucket of one, its batch this bucket (per-batch decisions stay the batch's)."""
        grads = self.grads or [None] * len(self.momenta)  # a share moved without its gradients
        return [
            Bucket(self.shape, [p], [] if g is None else [g], [m], [s], [n], batch=self.whole, transposed=self.transposed, skip=self.skip)
            for p, g, m, s, n in zip(self.params, grads, self.momenta, self.states, self.names)
        ]

    def stack_state(self, key: str) -> Tensor:
        return torch.stack([s[key] for s in self.states])

    def store_state(self, key: str, values: Tensor) -> None:
        """Write a ``(k, ...)`` stack back into the matrices' states, one slice each."""
        for s, v in zip(self.states, values.unbind(0)):
            s[key] = v


class BlockState(MutableMapping):
    """The state of block ``index`` of a parameter that stacks ``blocks`` matrices (experts, conv
    groups), so that one ``state_dict`` entry per key holds every block's state:

    * ``momentum_buffer``: the block's view (``block(buffer, index)``) of the parameter's buffer;
    * ``step``: the parameter's own;
    * any other tensor: row ``index`` of a ``(blocks, ...)`` tensor, created on the first write
      (the other blocks do not have the entry until they write theirs); deleting it hides it from
      this block and drops it once every block has deleted it (``deleted`` is shared by the blocks
      of one parameter for one step).
    """

    def __init__(self, state: dict, index: int, blocks: int, block: Callable[[Tensor, int], Tensor], deleted: dict) -> None:
        self.state, self.index, self.blocks, self.block, self.deleted = state, index, blocks, block, deleted

    def _hidden(self, key: str) -> bool:
        return self.index in self.deleted.get(key, ())

    def __getitem__(self, key: str):
        if self._hidden(key):
            raise KeyError(key)
        v = self.state[key]
        if key == "momentum_buffer":
            return self.block(v, self.index)
        return v[self.index] if key != "step" and isinstance(v, Tensor) else v

    def __setitem__(self, key: str, value) -> None:
        if key == "momentum_buffer":
            self.block(self.state[key], self.index).copy_(value)
            return
        if key == "step" or not isinstance(value, Tensor):
            self.state[key] = value
            return
        old = self.state.get(key)
        if not isinstance(old, Tensor) or old.shape != (self.blocks, *value.shape) or old.dtype != value.dtype:
            old = self.state[key] = value.new_zeros((self.blocks, *value.shape))
            self.deleted[key] = set(range(self.blocks))  # the other blocks have no such entry until they write it
        if key in self.deleted:
            self.deleted[key].discard(self.index)
        old[self.index].copy_(value)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        gone = self.deleted.setdefault(key, set())
        gone.add(self.index)
        if len(gone) == self.blocks or key in ("step", "momentum_buffer"):
            del self.state[key]
            del self.deleted[key]

    def __iter__(self) -> Iterator[str]:
        return (k for k in list(self.state) if not self._hidden(k))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def local_tensor(t: Tensor) -> Tensor:
    """A DTensor's local shard (a view: in-place updates write the DTensor), else ``t`` itself."""
    dtensor = sys.modules.get("torch.distributed.tensor")  # no DTensor exists until it is imported
    if dtensor is not None and isinstance(t, dtensor.DTensor):
        return t.to_local()
    return t


class Executor(Protocol):
    """Where an optimizer's bucket directions are computed: the seam between
    :class:`~steepest.optim.base.MatrixOptimizer` and :mod:`steepest.distributed`.

    The optimizer calls these four methods each step and knows nothing of ranks; an executor calls
    only the optimizer's public hooks (``prepare_directions``, ``direction``, ``direction_state``,
    ``directions_done``, ``direction_flops``, ``row_shard_direction``, ``elementwise``), so neither
    side names the other's internals."""

    def participating(self, optimizer, group: dict) -> list[bool]: ...

    def any_across_ranks(self, flags: Tensor) -> Tensor: ...

    def sum_across_ranks(self, tensors: list[Tensor]) -> list[Tensor]: ...

    def directions(self, optimizer, group: dict, buckets: list[Bucket]) -> list[Tensor]: ...


class LocalExecutor:
    """Computes every bucket's direction in this process (the single-process path).

    The distributed executors (:mod:`steepest.distributed`) implement the same four methods with
    collectives, so that the ranks agree on which matrices step and split the direction work.
    """

    def participating(self, optimizer, group: dict) -> list[bool]:
        """Which parameters of ``group`` take part in this step: here, those with a gradient."""
        return [p.grad is not None for p in group["params"]]

    def any_across_ranks(self, flags: Tensor) -> Tensor:
        """Element-wise OR of a flag vector over the ranks (here: the flags)."""
        return flags

    def sum_across_ranks(self, tensors: list[Tensor]) -> list[Tensor]:
        """Each tensor summed over the ranks (here: the tensors)."""
        return tensors

    def directions(self, optimizer, group: dict, buckets: list[Bucket]) -> list[Tensor]:
        out = []
        for bucket in buckets:
            optimizer.prepare_directions(group, bucket)
            out.append(optimizer.direction(group, bucket))
            optimizer.directions_done(group, bucket)
        return out


def shard_row_start(p: Tensor, m: int) -> int:
    """The first row of this rank's shard of ``p`` (``m`` rows): 0 for a plain tensor, else that of
    a ``Shard(0)`` DTensor on a 1-D mesh (``torch.chunk`` sizes, the only layout the distributed
    executor accepts)."""
    if not hasattr(p, "device_mesh"):
        return 0
    chunk = -(-m // p.device_mesh.size())
    return min(p.device_mesh.get_local_rank() * chunk, m)


def executor_for(optimizer) -> Executor:
    """The executor for ``optimizer`` in the current setting: :class:`LocalExecutor` in one
    process, else :class:`steepest.distributed.DistributedExecutor` over the default group
    (:func:`steepest.distributed.executor_for`, imported on first use)."""
    from .distributed.detect import executor_for as for_setting

    return for_setting(optimizer)

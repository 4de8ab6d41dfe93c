"""How a direction combines the pieces of a matrix whose rows are split across processes.

A low-rank iteration touches ``M`` only through products with thin blocks, so it can run on row
blocks ``M_r`` (FSDP2's ``Shard(0)``) if four operations combine the blocks: a sum over the blocks
(``Mᵀ P = Σ_r M_rᵀ P_r``), a maximum (a scale), an OR of flags (a decision every block takes alike)
and an orthonormal basis of a row-split thin matrix (a TSQR). :data:`LOCAL` is the single-process
case, where ``M`` is whole and each operation is the plain one; the distributed executor passes
collectives over its process group (:mod:`steepest.distributed.rowshards`). The directions that
accept ``ops`` (:func:`~steepest.directions.lowrank.block_triplets`,
:func:`~steepest.directions.fstar.fstar_adaptive`, :func:`~steepest.directions.dion.power_step`)
are then one function for both settings, checked against float64 once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RowCollectives", "LOCAL"]


def _same(t: Tensor) -> Tensor:
    return t


def _orthonormal_columns(X: Tensor) -> Tensor:
    return torch.linalg.qr(X, mode="reduced").Q


@dataclass(frozen=True)
class RowCollectives:
    """The operations that combine row blocks of a ``(k, m, n)`` batch (see the module doc).

    Attributes:
        sum: a tensor summed over the row blocks (every block gets the sum).
        max: element-wise maximum over the row blocks.
        any: element-wise OR of a bool tensor over the row blocks.
        orth: this block's rows of an orthonormal basis of the columns of a row-split ``(k, m, l)``.
        rows: the matrices' whole row count ``m`` (``None``: the tensors hold whole matrices).
        offset: the first row of this block.
    """

    sum: Callable[[Tensor], Tensor] = _same
    max: Callable[[Tensor], Tensor] = _same
    any: Callable[[Tensor], Tensor] = _same
    orth: Callable[[Tensor], Tensor] = _orthonormal_columns
    rows: int | None = None
    offset: int = 0

    def total_rows(self, M: Tensor) -> int:
        """``m`` of the whole matrices that ``M`` (``(..., rows, n)``) holds rows of."""
        return M.shape[-2] if self.rows is None else self.rows


LOCAL = RowCollectives()

"""Several tensors of mixed dtypes in one byte buffer, so that one collective moves them all.

A rank's block holds, entry after entry, ``slots`` items of each entry (a direction ``(m, n)``,
a Neon basis ``(n, l)``, an int64 rank ``()``), each entry's part padded to 16 bytes so that any
dtype can be viewed in place. all-gather of the blocks gives a ``(world, block)``
buffer from which :meth:`Layout.unpack` views every entry as ``(world, slots, *shape)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Layout"]

ALIGN = 16


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


@dataclass(frozen=True)
class Layout:
    """Entries ``{name: (shape, dtype)}``, ``slots`` items each, in one rank's byte block."""

    entries: tuple[tuple[str, tuple[int, ...], torch.dtype], ...]
    slots: int

    @classmethod
    def of(cls, entries: dict[str, tuple[tuple[int, ...], torch.dtype]], slots: int) -> Layout:
        return cls(tuple((k, tuple(s), d) for k, (s, d) in entries.items()), slots)

    def _parts(self):
        offset = 0
        for name, shape, dtype in self.entries:
            nbytes = self.slots * math.prod(shape) * dtype.itemsize
            yield name, shape, dtype, offset, nbytes
            offset += _aligned(nbytes)

    @property
    def nbytes(self) -> int:
        """Bytes of one rank's block."""
        return sum(_aligned(nbytes) for *_, nbytes in self._parts())

    def pack(self, values: dict[str, Tensor], device: torch.device) -> Tensor:
        """One rank's block: ``values[name]`` holds its first ``len`` items (the rest stay zero)."""
        block = torch.zeros(self.nbytes, dtype=torch.uint8, device=device)
        for name, shape, dtype, offset, nbytes in self._parts():
            value = values.get(name)
            if value is None or value.shape[0] == 0:
                continue
            if tuple(value.shape[1:]) != shape or value.dtype != dtype:
                raise RuntimeError(
                    f"direction state {name!r} has shape {tuple(value.shape[1:])} and dtype {value.dtype}, "
                    f"but direction_state() announced {shape} and {dtype}"
                )
            items = block[offset : offset + nbytes].view(dtype).view(self.slots, *shape)
            items[: value.shape[0]].copy_(value)
        return block

    def unpack(self, gathered: Tensor, world: int) -> dict[str, Tensor]:
        """Views ``(world, slots, *shape)`` of every entry in the gathered ``(world·nbytes,)`` buffer."""
        rows = gathered.view(world, self.nbytes)
        out = {}
        for name, shape, dtype, offset, nbytes in self._parts():
            out[name] = rows[:, offset : offset + nbytes].view(dtype).unflatten(1, (self.slots, *shape))
        return out

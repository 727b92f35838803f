"""Methods whose result is a combination ``sum_i k_i x_i`` of their inputs.

Spherical means (multislerp, karcher) only ever take dot products of vectors in the span of
the inputs, so everything they need is the Gram matrix ``x_i . x_j``: one pass over the
inputs gathers it (:class:`Gram`, in row chunks when the tensor is large), the coefficients
``k_i`` are worked out on the host in float64, and a second pass writes
:func:`combine` chunk by chunk. Sums are fixed-order (:class:`~.reductions.BlockSums`), so
chunked and whole give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mergekit_like.methods.reductions import BlockSums

if TYPE_CHECKING:
    import torch


class Gram:
    """The dot products of ``n`` flat tensors of ``numel`` entries, seen chunk by chunk.

    >>> import torch
    >>> g = Gram(2, 2)
    >>> g.add([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])])
    >>> g.matrix()
    [[5.0, 11.0], [11.0, 25.0]]
    """

    def __init__(self, n: int, numel: int) -> None:
        self.n = n
        self._pairs = [(i, j) for i in range(n) for j in range(i, n)]
        self._sums = [BlockSums(numel) for _ in self._pairs]

    def add(self, xs: Sequence[torch.Tensor]) -> None:
        """Account for the next chunk of every tensor (same rows of each)."""
        flat = [x.reshape(-1) for x in xs]
        for (i, j), sums in zip(self._pairs, self._sums, strict=True):
            sums.add(flat[i] * flat[j])

    def matrix(self) -> list[list[float]]:
        """The whole tensors' Gram matrix (once every chunk is added)."""
        gram = [[0.0] * self.n for _ in range(self.n)]
        for (i, j), sums in zip(self._pairs, self._sums, strict=True):
            gram[i][j] = gram[j][i] = sums.total().item()
        return gram


def combine(xs: Sequence[torch.Tensor], coefficients: Sequence[float]) -> torch.Tensor:
    """``sum_i k_i x_i``, in place on the ``xs``: products, then sums (no fused multiply-add,
    so every device rounds alike)."""
    out = xs[0].mul_(coefficients[0])
    for k, x in zip(coefficients[1:], xs[1:], strict=True):
        out.add_(x.mul_(k))
    return out

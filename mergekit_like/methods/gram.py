"""Methods whose result is a combination ``sum_i k_i x_i`` of their inputs.

Spherical means (slerp, nuslerp, multislerp, karcher) only ever take dot products of vectors
in the span of the inputs, so everything they need is the Gram matrix ``x_i . x_j``: one
pass over the inputs gathers it (:class:`Gram`, in row chunks when the tensor is large),
the coefficients ``k_i`` are worked out on the host in float64, and a second pass writes
:func:`combine` chunk by chunk. Sums are fixed-order (:class:`~.reductions.BlockSums`; in C
where the run's kernels allow, :mod:`mergekit_like.native.gram`), so chunked and whole give
the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mergekit_like.methods.reductions import BLOCK, BlockSums

if TYPE_CHECKING:
    import torch

    from mergekit_like.methods.kernels import Kernels


class Gram:
    """The dot products of ``n`` flat tensors of ``numel`` entries, seen chunk by chunk.

    >>> import torch
    >>> g = Gram(2, 2)
    >>> g.add([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])])
    >>> g.matrix()
    [[5.0, 11.0], [11.0, 25.0]]
    """

    def __init__(self, n: int, numel: int, kernels: Kernels | None = None) -> None:
        self.n, self.numel = n, numel
        self._pairs = [(i, j) for i in range(n) for j in range(i, n)]
        self._sums = [BlockSums(numel) for _ in self._pairs]
        native = kernels.native() if kernels is not None else None
        self._pass = native.gram if native is not None else None

    def add(self, xs: Sequence[torch.Tensor]) -> None:
        """Account for the next chunk of every tensor (same rows of each)."""
        flat = [x.reshape(-1) for x in xs]
        n = flat[0].numel()
        if self._pass is None or self.numel <= BLOCK or not self._pass.supports(flat):
            self._add(flat)
            return
        head = min(n, -self._sums[0].seen % BLOCK)  # the end of a block a chunk began
        tail = head + (n - head) // BLOCK * BLOCK
        self._add([f[:head] for f in flat])
        if tail > head:  # whole blocks: summed in C, without writing the products
            sums = self._pass.block_sums([f[head:tail] for f in flat])
            for k, block_sums in enumerate(self._sums):
                block_sums.add_block_sums(sums[k])
        self._add([f[tail:] for f in flat])

    def _add(self, flat: Sequence[torch.Tensor]) -> None:
        if flat[0].numel():
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


Inputs = Callable[["Sequence[torch.Tensor]", "torch.Tensor | None"], "list[torch.Tensor]"]
"""Which vectors a method combines, from its ``tensors`` and ``base``."""


def task_vectors(tensors: Sequence[torch.Tensor], base: torch.Tensor | None) -> list[torch.Tensor]:
    """The tensors themselves, or ``x - base`` when there is a base (new tensors)."""
    return list(tensors) if base is None else [x - base for x in tensors]


class GramStats:
    """One statistics pass gathering the Gram matrix of a method's vectors; then
    ``sum_i k_i x_i`` with ``k = solve(gram)``. Implements
    :class:`~mergekit_like.methods.spec.TensorStats`.

    ``inputs`` picks the vectors from ``(tensors, base)`` (default :func:`task_vectors`);
    the Gram matrix is sized at the first chunk. ``kernels``: sum the products in C where
    the run's kernels allow (:mod:`mergekit_like.native.gram`; the same bytes). ``apply``
    gets the same vectors, whole or a chunk, and combines them in place; coefficients that
    are all zero give zeros.
    """

    rounds = 1

    def __init__(self, numel: int, solve: Callable[[list[list[float]]], Sequence[float]],
                 inputs: Inputs = task_vectors, kernels: Kernels | None = None) -> None:
        self.numel, self.solve, self.inputs, self.kernels = numel, solve, inputs, kernels
        self._gram: Gram | None = None
        self.coefficients: list[float] | None = None

    def wants(self, round_: int) -> bool:
        """Every round is needed."""
        return True

    def observe(self, round_: int, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                start: int) -> None:
        xs = self.inputs(tensors, base)
        if self._gram is None:
            self._gram = Gram(len(xs), self.numel, self.kernels)
        self._gram.add(xs)

    def finish(self, round_: int) -> None:
        assert self._gram is not None, "observe() the chunks first"
        self.coefficients = list(self.solve(self._gram.matrix()))

    def apply(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``sum_i k_i x_i`` in place on the ``xs`` (:func:`combine`)."""
        assert self.coefficients is not None, "finish() the round first"
        if not any(self.coefficients):
            return xs[0].zero_()
        return combine(xs, self.coefficients)

"""Whole-tensor reductions in mergekit's own torch calls, fed by row chunks.

mergekit's spherical methods reduce each tensor with plain float32 torch calls
(``torch.linalg.vector_norm``, ``(x * y).sum(dim=1)``) over fixed pieces of the flat tensor.
The last bits of such a sum depend on torch's summation order, which depends on the
length of the piece (and, for ``sum``, on the number of intra-op threads), so no other order
(float64 on the host, :class:`~.reductions.BlockSums`, a C kernel) reproduces mergekit's
bytes. :class:`Pieces` gives the same torch calls the same pieces instead: it cuts the row
chunks the executor hands over back into mergekit's pieces of :data:`PIECE` entries (a view
where a chunk holds a whole piece, else a copy into a buffer of one piece per input), so the
whole tensor and any row chunking give the same pieces, the same calls and the same bytes.

The price: the memory of one piece per input (4 MiB each in float32) on top of the chunk,
and results that follow torch's reductions, so they change with the thread count and the
device exactly where mergekit's do (:mod:`~.reductions` stays for what needs no parity).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PIECE = 1024 * 1024
"""mergekit's ``_CHUNK_ELEMENTS`` (``merge_methods/slerp.py``): entries per reduced piece
of a tensor merged alone (mergekit's run merges one output tensor per batch)."""


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype mergekit's spherical methods compute in: float64 inputs stay float64,
    everything else is computed in float32."""
    import torch

    return torch.float64 if dtype == torch.float64 else torch.float32


class Pieces:
    """Cuts ``n`` flat streams of ``numel`` entries, fed chunk by chunk in order, into
    pieces of :data:`PIECE` entries (the last one shorter), in :func:`work_dtype`.

    >>> import torch
    >>> p = Pieces(1, 3, piece=2)
    >>> [list(map(torch.Tensor.tolist, ps)) for ps in p.feed([torch.tensor([1.0, 2.0])])]
    [[[1.0, 2.0]]]
    >>> [list(map(torch.Tensor.tolist, ps)) for ps in p.feed([torch.tensor([3.0])])]
    [[[3.0]]]
    """

    def __init__(self, n: int, numel: int, *, piece: int = PIECE) -> None:
        self.n, self.numel, self.piece = n, numel, piece
        self.seen = 0  # entries fed so far
        self._buffers: list[torch.Tensor] | None = None
        self._filled = 0  # entries of the current piece held in the buffers

    def _length(self, start: int) -> int:
        return min(self.piece, self.numel - start)

    def feed(self, xs: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
        """The pieces (one tensor per stream, 1-D) that the chunk ``xs`` completes. A piece
        is valid until the next one is drawn (it may be a reused buffer)."""
        flat = [x.reshape(-1) for x in xs]
        size, at = flat[0].numel(), 0
        assert self.seen + size <= self.numel, "more entries than the tensor holds"
        while at < size:
            start = self.seen + at - self._filled  # where the current piece begins
            length = self._length(start)
            take = min(length - self._filled, size - at)
            if self._filled == 0 and take == length:  # the chunk holds the whole piece
                yield [self._work(f[at : at + length]) for f in flat]
            else:
                if self._buffers is None:
                    self._buffers = [
                        f.new_empty(self.piece, dtype=work_dtype(f.dtype)) for f in flat
                    ]
                for buf, f in zip(self._buffers, flat, strict=True):
                    buf[self._filled : self._filled + take].copy_(f[at : at + take])
                self._filled += take
                if self._filled == length:
                    self._filled = 0
                    yield [buf[:length] for buf in self._buffers]
            at += take
        self.seen += size

    @staticmethod
    def _work(x: torch.Tensor) -> torch.Tensor:
        return x.to(work_dtype(x.dtype))

    def done(self) -> None:
        """Check that every entry was fed, and get ready for another pass."""
        assert self.seen == self.numel and self._filled == 0, "a piece was left unfinished"
        self.seen = 0


"""Sums whose rounding depends on neither the number of threads nor the device.

``torch.sum`` over a large tensor splits the work among the intra-op threads (or a GPU's
blocks) and adds the partial sums in an order of its own, so the last bits of the result
(and of everything scaled by it: DARE's L1 rescaling, for one) change with
``torch.set_num_threads`` and between CPU and GPU. :func:`stable_sum` fixes the
order instead: the flat tensor is cut into blocks of :data:`BLOCK` entries, each block is
summed by a fixed pairwise tree (:func:`tree_sum`: halves added elementwise, then their
halves, ...), then the block sums the same way. Every step is an elementwise IEEE addition,
which every device rounds alike, so the result is the same bytes on 1 thread or 64, on the
CPU or a GPU.

Where mergekit's bytes are the goal and its sum is torch's own (TIES' L1 rescale, SCE's
energies, Model Stock's angle), :class:`Gathered` and :class:`TorchSum` hold the whole
tensor fed in chunks and make torch's call instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BLOCK = 4096


def tree_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum along the last dimension by a fixed pairwise tree, the same on any device.

    The last dimension is padded with zeros to a power of two, then halved until one entry
    is left: ``x[..., :h] + x[..., h:]``, elementwise, so the order of the additions never
    depends on threads or hardware.

    >>> import torch
    >>> tree_sum(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    tensor([ 6., 15.])
    """
    import torch.nn.functional as F

    width = x.shape[-1]
    if width == 0:
        return x.new_zeros(x.shape[:-1])
    pad = (1 << (width - 1).bit_length()) - width
    if pad:
        x = F.pad(x, (0, pad))
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def stable_sum(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``x.sum()`` (or ``x.sum(dim)``) in a fixed order: blocks of :data:`BLOCK` entries,
    each summed by :func:`tree_sum`, then the block sums the same way.

    >>> import torch
    >>> stable_sum(torch.ones(10_000))
    tensor(10000.)
    >>> stable_sum(torch.ones(2, 3), dim=0)
    tensor([2., 2., 2.])
    """
    import torch.nn.functional as F

    x = x.reshape(-1) if dim is None else x.movedim(dim, -1)
    while x.shape[-1] > BLOCK:
        pad = -x.shape[-1] % BLOCK
        if pad:
            x = F.pad(x, (0, pad))
        x = tree_sum(x.reshape(*x.shape[:-1], -1, BLOCK))
    return tree_sum(x)


def stable_norm(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The L2 norm of ``x`` (along ``dim``), thread-count independent like :func:`stable_sum`."""
    return stable_sum(x * x, dim).sqrt()


class BlockSums:
    """:func:`stable_sum` of ``numel`` entries seen in consecutive chunks, with the same bytes.

    The first-level block sums of :func:`stable_sum` (one float per :data:`BLOCK` entries of
    the flat tensor) are written into one buffer allocated at the first chunk, a block that
    straddles two chunks once both are seen, and summed as :func:`stable_sum` would at
    :meth:`total`. Nothing else stays allocated between chunks, so the merge's large
    temporaries are not fragmented by small long-lived allocations among them.

    >>> import torch
    >>> x = torch.rand(3 * BLOCK + 5)
    >>> sums = BlockSums(x.numel())
    >>> sums.add(x[:100]); sums.add(x[100:])
    >>> bool(sums.total() == stable_sum(x))
    True
    """

    def __init__(self, numel: int) -> None:
        self.numel = numel
        self._seen = 0
        self._small: torch.Tensor | None = None  # numel <= BLOCK: the entries themselves
        self._level1: torch.Tensor | None = None
        self._tail: torch.Tensor | None = None  # the block being filled

    def add(self, x: torch.Tensor) -> None:
        """Account for the next chunk (any shape; its entries in flat order)."""
        import torch

        flat = x.reshape(-1)
        n, pos = flat.numel(), self._seen
        self._seen += n
        if self._seen > self.numel:
            raise ValueError(f"block sums of {self.numel} entries got {self._seen}")
        if self.numel <= BLOCK:  # stable_sum sums a short tensor directly
            self._small = flat.clone() if self._small is None else torch.cat([self._small, flat])
            return
        if self._level1 is None:
            self._level1 = flat.new_empty(-(-self.numel // BLOCK))
            self._tail = flat.new_zeros(BLOCK)
        assert self._tail is not None
        i = 0
        fill = pos % BLOCK
        if fill:  # complete the block a previous chunk began
            i = min(n, BLOCK - fill)
            self._tail[fill:fill + i].copy_(flat[:i])
            if fill + i == BLOCK:
                self._sum_tail(pos // BLOCK)
        whole = (n - i) // BLOCK * BLOCK
        if whole:
            first = (pos + i) // BLOCK
            self._level1[first:first + whole // BLOCK] = tree_sum(
                flat[i:i + whole].view(-1, BLOCK))
        if i + whole < n:
            self._tail[:n - i - whole].copy_(flat[i + whole:])

    @property
    def seen(self) -> int:
        """Entries added so far."""
        return self._seen

    def add_block_sums(self, sums: torch.Tensor) -> None:
        """Account for the next ``len(sums)`` whole blocks, given as their :func:`tree_sum`
        (computed elsewhere, e.g. by a C kernel): only where the entries seen so far end a
        block and the tensor has more than one block."""
        if self._seen % BLOCK or self.numel <= BLOCK:
            raise ValueError("block sums must start a block of a tensor of several blocks")
        if self._level1 is None:
            self._level1 = sums.new_empty(-(-self.numel // BLOCK))
            self._tail = sums.new_zeros(BLOCK)
        first = self._seen // BLOCK
        self._seen += sums.numel() * BLOCK
        if self._seen > self.numel:
            raise ValueError(f"block sums of {self.numel} entries got {self._seen}")
        self._level1[first:first + sums.numel()] = sums

    def total(self) -> torch.Tensor:
        """The sum of every entry added, equal to ``stable_sum`` of them all at once."""
        import torch

        if self._seen != self.numel:
            raise ValueError(f"block sums of {self.numel} entries got {self._seen}")
        if self.numel <= BLOCK:
            return tree_sum(self._small) if self._small is not None else torch.zeros(())
        assert self._level1 is not None and self._tail is not None
        fill = self._seen % BLOCK
        if fill:  # the last block, padded with zeros as stable_sum pads it
            self._tail[fill:].zero_()
            self._sum_tail(len(self._level1) - 1)
        return stable_sum(self._level1)

    def _sum_tail(self, block: int) -> None:

        assert self._level1 is not None and self._tail is not None
        self._level1[block] = tree_sum(self._tail)


class ColumnSums:
    """:func:`stable_sum` along the first dimension of a tensor of ``rows`` rows seen in row
    chunks: ``stable_sum(x.transpose(0, -1), -1)`` of the whole tensor, with the same bytes.

    Every chunk but the last must hold a multiple of :data:`BLOCK` rows, so that no
    first-level block straddles two chunks; a tensor of at most :data:`BLOCK` rows is one
    tree and must come whole. The first-level sums (one per :data:`BLOCK` rows of each
    column) go into one buffer, allocated at the first chunk.

    >>> import torch
    >>> x = torch.rand(BLOCK + 7, 3)
    >>> sums = ColumnSums(x.shape[0])
    >>> sums.add(x[:BLOCK]); sums.add(x[BLOCK:])
    >>> torch.equal(sums.total(), stable_sum(x.transpose(0, -1), -1))
    True
    """

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._seen = 0
        self._sums: torch.Tensor | None = None  # first-level sums; or, small, the total

    def add(self, x: torch.Tensor) -> None:
        """Account for the next rows (``x``: rows along dimension 0)."""
        import torch.nn.functional as F

        count = x.shape[0]
        if self._seen % BLOCK or (self.rows <= BLOCK and count != self.rows):
            raise ValueError(f"column sums of {self.rows} rows take chunks of whole "
                             f"{BLOCK}-row blocks but the last (got {count} rows after "
                             f"{self._seen})")
        if self._seen + count > self.rows:
            raise ValueError(f"column sums of {self.rows} rows got {self._seen + count}")
        t = x.transpose(0, -1)
        if self.rows <= BLOCK:
            self._sums = tree_sum(t)
        else:
            pad = -count % BLOCK
            if pad:
                t = F.pad(t, (0, pad))
            sums = tree_sum(t.reshape(*t.shape[:-1], -1, BLOCK))
            if self._sums is None:
                self._sums = sums.new_empty(*sums.shape[:-1], -(-self.rows // BLOCK))
            first = self._seen // BLOCK
            self._sums[..., first:first + sums.shape[-1]] = sums
        self._seen += count

    def total(self) -> torch.Tensor:
        """The column sums over every row added."""
        if self._seen != self.rows or self._sums is None:
            raise ValueError(f"column sums of {self.rows} rows got {self._seen}")
        return self._sums if self.rows <= BLOCK else stable_sum(self._sums, -1)


class Gathered:
    """A flat tensor of ``numel`` entries fed in consecutive chunks, kept whole for torch's
    own reductions (whose bytes no sum of chunks reproduces, see :class:`TorchSum`).

    A single chunk holding every entry is kept as it is (no copy); otherwise the chunks are
    copied into one buffer allocated at the first. :meth:`whole` hands the flat tensor over
    and forgets it, so the memory goes with the caller's last reference.

    >>> import torch
    >>> g = Gathered(3)
    >>> g.add(torch.tensor([1.0, 2.0])); g.add(torch.tensor([3.0]))
    >>> g.whole()
    tensor([1., 2., 3.])
    """

    def __init__(self, numel: int) -> None:
        self.numel = numel
        self._seen = 0
        self._flat: torch.Tensor | None = None

    @property
    def seen(self) -> int:
        """Entries added so far."""
        return self._seen

    def add(self, x: torch.Tensor) -> None:
        """Take the next chunk (any shape; its entries in flat order)."""
        flat = x.reshape(-1)
        n, pos = flat.numel(), self._seen
        if pos + n > self.numel:
            raise ValueError(f"a gather of {self.numel} entries got {pos + n}")
        if pos == 0 and n == self.numel:
            self._flat = flat
        else:
            if self._flat is None:
                self._flat = flat.new_empty(self.numel)
            self._flat[pos:pos + n].copy_(flat)
        self._seen = pos + n

    def whole(self) -> torch.Tensor:
        """Every entry added, as one flat tensor (then forgotten here)."""
        import torch

        if self._seen != self.numel:
            raise ValueError(f"a gather of {self.numel} entries got {self._seen}")
        flat = self._flat if self._flat is not None else torch.zeros(0)
        self._flat = None
        return flat


class TorchSum(Gathered):
    """``torch.sum`` of ``numel`` entries fed in chunks, with the bytes of ``x.sum()`` of
    the whole tensor: mergekit's order, for parity.

    torch's CPU sum of more than 32768 entries splits them among the intra-op threads
    (ranges of ``ceil(n / threads)``), sums each range by a cascade whose shape depends on
    the range's length and the CPU's vector width, then adds the partials; so, unlike
    :class:`BlockSums`, its bytes follow ``torch.get_num_threads()`` and the CPU, exactly as
    mergekit's do, and no chunk-wise sum reproduces them. The price: the whole tensor in
    memory until :meth:`total` (no copy when it comes as one chunk).

    >>> import torch
    >>> x = torch.rand(100_000)
    >>> s = TorchSum(x.numel())
    >>> s.add(x[:7]); s.add(x[7:])
    >>> bool(s.total() == x.sum())
    True
    """

    def add_block_sums(self, sums: torch.Tensor) -> None:
        """Refused: block sums cannot give torch's order (feed the entries)."""
        raise ValueError("torch-order sums take the entries, not block sums")

    def total(self) -> torch.Tensor:
        """``x.sum()`` of every entry added."""
        return self.whole().sum()

"""Sums whose rounding does not depend on the number of threads.

``torch.sum`` over a whole large tensor splits the work among the intra-op threads and adds
the partial sums in an order that depends on how many there are, so the last bits of the
result (and of everything scaled by it: DARE's L1 rescaling, SCE's weights, Model Stock's
angle) change with ``torch.set_num_threads``. :func:`stable_sum` adds fixed blocks of
:data:`BLOCK` entries first, then the block sums, and so on: every partial sum is a
reduction along the last dimension of a fixed shape, which torch computes one output per
thread, so the result is the same bytes on 1 thread or 64.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BLOCK = 4096


def stable_sum(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``x.sum()`` (or ``x.sum(dim)``) computed in a thread-count independent order.

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
        x = x.reshape(*x.shape[:-1], -1, BLOCK).sum(dim=-1)
    return x.sum(dim=-1)


def stable_norm(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The L2 norm of ``x`` (along ``dim``), thread-count independent like :func:`stable_sum`."""
    return stable_sum(x * x, dim).sqrt()


class BlockSums:
    """:func:`stable_sum` of a tensor seen in consecutive chunks, with the same bytes.

    The first-level block sums of :func:`stable_sum` (one float per :data:`BLOCK` entries of
    the flat tensor) are taken as the chunks arrive, a block that straddles two chunks once
    both are seen, and summed as :func:`stable_sum` would at :meth:`total`.

    >>> import torch
    >>> x = torch.rand(3 * BLOCK + 5)
    >>> sums = BlockSums()
    >>> sums.add(x[:100]); sums.add(x[100:])
    >>> bool(sums.total() == stable_sum(x))
    True
    """

    def __init__(self) -> None:
        self._parts: list[torch.Tensor] = []
        self._tail: torch.Tensor | None = None  # entries of a block not yet complete
        self._numel = 0

    def add(self, x: torch.Tensor) -> None:
        """Account for the next chunk (any shape; its entries in flat order)."""
        import torch

        flat = x.reshape(-1)
        self._numel += flat.numel()
        if self._numel <= BLOCK:  # kept whole: stable_sum sums a short tensor directly
            self._tail = flat.clone() if self._tail is None else torch.cat([self._tail, flat])
            return
        if self._tail is not None:
            need = BLOCK - self._tail.numel()
            self._tail = torch.cat([self._tail, flat[:need]])
            flat = flat[need:]
            if self._tail.numel() < BLOCK:
                return
            self._parts.append(self._tail.reshape(1, BLOCK).sum(dim=-1))
            self._tail = None
        whole = flat.numel() - flat.numel() % BLOCK
        if whole:
            self._parts.append(flat[:whole].reshape(-1, BLOCK).sum(dim=-1))
        if whole < flat.numel():
            self._tail = flat[whole:].clone()

    def total(self) -> torch.Tensor:
        """The sum of every entry added, equal to ``stable_sum`` of them all at once."""
        import torch
        import torch.nn.functional as F

        if self._numel <= BLOCK:
            return self._tail.sum() if self._tail is not None else torch.zeros(())
        parts = list(self._parts)
        if self._tail is not None:
            parts.append(F.pad(self._tail, (0, BLOCK - self._tail.numel()))
                         .reshape(1, BLOCK).sum(dim=-1))
        return stable_sum(torch.cat(parts))

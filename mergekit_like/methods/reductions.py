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

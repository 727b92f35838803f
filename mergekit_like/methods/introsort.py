"""Which entries an unstable CPU sort puts before a cut: torch's ``argsort`` on a CPU.

mergekit ranks magnitudes with ``torch.argsort`` / ``torch.sort`` without ``stable=True``.
On a CPU, torch 2.13 sorts a float32 row with libstdc++'s ``std::sort`` over (value, index)
pairs compared by value alone: an introsort, whose order among equal values follows from
every value of the row, not from positions. This module replays that algorithm far enough
to tell which entries end up before each of a few cut points (``sorted[:k]``), without
sorting the rest:

- while a range holds more than 16 entries, its median of three (second, middle and last
  entry) is moved to its front and the range is split by an unguarded Hoare partition;
  only the parts holding a cut are followed (a part's set of entries is final once made);
- after ``2 * floor(log2(n))`` splits, a range left is heap-sorted instead;
- a range of 16 or fewer ends in insertion sort: stable, and no entry crosses into
  another range, so a stable sort of its entries decides it.

The replay runs in C where a compiler is found (``native/introsort.c``, the algorithm's
loops as they are); else in torch, each partition with whole-tensor operations (the left
scan's stops and the right scan's stops, paired until they cross). Same result either way.
Keys are int32, sorted ascending; a descending sort is the ascending sort of the negated
keys.

The 9 smallest of 40 keys, as ``torch.argsort(keys)[:9]`` on a CPU picks them (a stable
sort would take the 1 at position 6 and 10, not those at 26 and 30):

>>> import torch
>>> keys = torch.tensor([2, 1, 2, 2, 0, 2, 1, 2, 2, 2, 1, 2, 2, 2, 0, 2, 2, 2, 1, 2] * 2)
>>> before_cuts(keys, [9])[0].nonzero().squeeze(1).tolist()
[1, 4, 14, 18, 21, 24, 26, 30, 34]
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

THRESHOLD = 16
"""Ranges of at most this many entries are left to the final insertion sort."""

SOURCE = Path(__file__).parent.parent / "native" / "introsort.c"


def _native() -> ctypes.CDLL | None:
    """The C replay (built once, then taken from the cache); None where it cannot be built,
    or ``MERGEKIT_LIKE_NATIVE=0`` (then torch replays)."""
    from mergekit_like.native.build import BuildError, load

    try:
        lib = load(SOURCE)
    except BuildError:
        return None
    lib.mk_introsort_settle.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
    ]
    return lib


def sort_keys(mags: torch.Tensor, descending: bool) -> torch.Tensor:
    """int32 keys ordering magnitudes (as float32: mergekit casts them so on a CPU) as
    torch's CPU sort compares them (every NaN equal and last ascending, first descending),
    negated for a descending sort."""
    import torch

    flat = mags.reshape(-1).float()
    keys = flat.view(torch.int32) & 0x7FFFFFFF
    keys = torch.where(torch.isnan(flat), torch.full_like(keys, 0x7FC00000), keys)
    return keys.neg_() if descending else keys


def before_cuts(
    keys: torch.Tensor, cuts: Sequence[int], depth: int | None = None
) -> list[torch.Tensor]:
    """For each cut ``k``, a boolean mask over ``keys`` of the entries that an introsort of
    ``keys`` (ascending, as libstdc++'s ``std::sort``) places at ``sorted[:k]``.

    ``depth``: the splits allowed before heap sort takes over (std::sort's by default).
    """
    import torch

    n = keys.numel()
    _, idx = settled(keys, cuts, depth)
    out = []
    for k in cuts:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[idx[: max(0, min(k, n))]] = True
        out.append(mask)
    return out


def settled(
    keys: torch.Tensor,
    cuts: Sequence[int],
    depth: int | None = None,
    inplace: bool = False,
    blocks: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keys, positions)`` arranged as the introsort leaves them, as far as the cuts need
    (see :func:`before_cuts`): ``positions[:k]`` are the entries sorted before each cut.
    ``inplace``: arrange ``keys`` itself (flat, contiguous int32). ``blocks``: the C replay
    finds each partition's swaps a block of entries at a time, without branches (the same
    swaps as one entry at a time, some times faster)."""
    import torch

    n = keys.numel()
    depth = 2 * (n.bit_length() - 1) if depth is None else depth
    vals = keys if inplace else keys.reshape(-1).to(torch.int32, copy=True)
    idx = torch.arange(n, dtype=torch.int64)
    inner = sorted({k for k in cuts if 0 < k < n})
    lib = _native()
    if lib is not None and inner:
        want = (ctypes.c_int64 * len(inner))(*inner)
        lib.mk_introsort_settle(vals.data_ptr(), idx.data_ptr(), n, want, len(inner), depth,
                                int(blocks))
    elif n > 1 and inner:
        _settle(vals, idx, 0, n, depth, inner)
    return vals, idx


def _settle(
    vals: torch.Tensor, idx: torch.Tensor, first: int, last: int, depth: int, cuts: list[int]
) -> None:
    """Arrange ``[first, last)`` as the introsort would, as far as the cuts inside need."""
    work = [(first, last, depth)]
    while work:
        first, last, depth = work.pop()
        if not any(first < k < last for k in cuts):
            continue
        if last - first <= THRESHOLD:
            _stable(vals, idx, first, last)
        elif depth == 0:
            _heap_sort(vals, idx, first, last)
        else:
            cut = _partition(vals, idx, first, last)
            work += [(cut, last, depth - 1), (first, cut, depth - 1)]


def _stable(vals: torch.Tensor, idx: torch.Tensor, first: int, last: int) -> None:
    import torch

    order = torch.sort(vals[first:last], stable=True).indices
    vals[first:last] = vals[first:last][order]
    idx[first:last] = idx[first:last][order]


def _swap(vals: torch.Tensor, idx: torch.Tensor, a: int, b: int) -> None:
    vals[[a, b]] = vals[[b, a]]
    idx[[a, b]] = idx[[b, a]]


def _partition(vals: torch.Tensor, idx: torch.Tensor, first: int, last: int) -> int:
    """Median of three to ``first``, then the unguarded partition of ``(first, last)``
    around it; returns the cut."""
    a, b, c = first + 1, first + (last - first) // 2, last - 1
    va, vb, vc = (int(vals[i]) for i in (a, b, c))
    if va < vb:
        median = b if vb < vc else (c if va < vc else a)
    else:
        median = a if va < vc else (c if vb < vc else b)
    _swap(vals, idx, first, median)
    pivot = vals[first]
    seg = vals[first + 1 : last]
    lefts = (seg >= pivot).nonzero().squeeze(1) + (first + 1)  # left scan stops, ascending
    rights = (vals[first:last] <= pivot).nonzero().squeeze(1).flip(0) + first  # right scan's
    m = min(lefts.numel(), rights.numel())
    crossed = (lefts[:m] >= rights[:m]).nonzero()
    swaps = int(crossed[0]) if crossed.numel() else m
    left, right = lefts[:swaps], rights[:swaps]
    for arr in (vals, idx):
        held = arr[left].clone()
        arr[left] = arr[right]
        arr[right] = held
    if swaps == 0:
        return int(lefts[0])
    stop = int(lefts[swaps]) if swaps < lefts.numel() else last
    return min(stop, int(rights[swaps - 1]))


def _heap_sort(vals: torch.Tensor, idx: torch.Tensor, first: int, last: int) -> None:
    """libstdc++'s heap sort of ``[first, last)`` (where an introsort runs out of depth)."""
    v, i = vals[first:last].tolist(), idx[first:last].tolist()
    items = list(zip(v, i, strict=True))
    n = len(items)
    for parent in range((n - 2) // 2, -1, -1):
        _adjust(items, parent, n, items[parent])
    for end in range(n - 1, 0, -1):
        value = items[end]
        items[end] = items[0]
        _adjust(items, 0, end, value)
    import torch

    vals[first:last] = torch.tensor([x for x, _ in items], dtype=vals.dtype)
    idx[first:last] = torch.tensor([x for _, x in items], dtype=idx.dtype)


def _adjust(items: list[tuple[int, int]], hole: int, n: int, value: tuple[int, int]) -> None:
    top, child = hole, hole
    while child < (n - 1) // 2:
        child = 2 * (child + 1)
        if items[child][0] < items[child - 1][0]:
            child -= 1
        items[hole] = items[child]
        hole = child
    if n % 2 == 0 and child == (n - 2) // 2:
        child = 2 * (child + 1)
        items[hole] = items[child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and items[parent][0] < value[0]:
        items[hole] = items[parent]
        hole = parent
        parent = (hole - 1) // 2
    items[hole] = value


class TieReplay:
    """A tensor's magnitudes gathered chunk by chunk, to tell which of its entries equal to a
    rank window's boundary value torch's CPU sort keeps (see the module docstring).

    ``lo, hi``: the window, in ranks of an ascending sort; ``descending``: the sort it
    replays is descending (TIES: ``argsort(descending=True)[:k]``), else ascending
    (Breadcrumbs). ``topk``: the window is the top ``hi - lo`` (``hi`` = the numel) as
    torch's CPU ``topk(largest=True)`` picks them (SCE): torch's own call on the keys, whose
    order is the magnitudes' (its selection compares values only). :meth:`add` every
    chunk's bit patterns in order, then :meth:`picks`. Holds the whole tensor's keys (4
    bytes an entry, 16 during :meth:`picks`).
    """

    def __init__(self, numel: int, lo: int, hi: int, descending: bool,
                 topk: bool = False) -> None:
        import torch

        if topk and hi != numel:
            raise ValueError(f"a topk tie replay keeps the top entries, not ranks {lo}..{hi}")
        self.numel, self.lo, self.hi, self.descending = numel, lo, hi, descending
        self.topk = topk
        self.keys = torch.empty(numel, dtype=torch.int32)
        self.seen = 0

    def add(self, bits: torch.Tensor) -> None:
        """The next chunk's magnitude bit patterns (flat; 16- or 32-bit floats')."""
        flat = bits.reshape(-1)
        self.keys[self.seen : self.seen + flat.numel()] = flat.cpu()
        self.seen += flat.numel()

    def picks(self, values: Sequence[int]) -> dict[int, torch.Tensor]:
        """Per value, a boolean tensor over the entries equal to it (in position order):
        whether the sort places each inside the window."""
        if self.seen != self.numel:
            raise ValueError(f"tie replay over {self.numel} entries saw {self.seen}")
        import torch

        n, sign = self.numel, -1 if self.descending else 1
        a, b = (n - self.hi, n - self.lo) if self.descending else (self.lo, self.hi)
        ties = {v: (self.keys == v).nonzero().squeeze(1) for v in values}
        if self.topk:
            kept = torch.zeros(n, dtype=torch.bool)
            kept[torch.topk(self.keys, self.hi - self.lo, largest=True).indices] = True
            self.keys = self.keys[:0]
            return {v: kept[where] for v, where in ties.items()}
        keys, self.keys = self.keys.neg_() if self.descending else self.keys, self.keys[:0]
        vals, idx = settled(keys, [a, b], inplace=True)
        vals, idx = vals[a:b], idx[a:b]  # the window, in the sort's order
        out = {}
        for v, where in ties.items():
            kept = torch.zeros(n, dtype=torch.bool)
            kept[idx[vals == sign * v]] = True
            out[v] = kept[where]
        return out


def one_run(pick: torch.Tensor) -> tuple[int, int]:
    """``(first, stop)`` when the True entries of ``pick`` are one run (``(0, 0)``: none),
    else ``(-1, -1)``."""
    where = pick.nonzero()
    if not where.numel():
        return 0, 0
    first, stop = int(where[0]), int(where[-1]) + 1
    return (first, stop) if stop - first == where.numel() else (-1, -1)

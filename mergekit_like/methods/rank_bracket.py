"""One-pass rank selection by bracketing: the rank window's first round on a CPU.

A radix select reads a tensor twice and histograms every entry (a scattered add per entry).
Bracketing instead takes a sample of the first chunk's magnitudes, brackets the values at
the wanted ranks between two sample quantiles (:func:`choose_brackets`), and then makes one
pass over the tensor that only counts and compares: for each bracket ``[lo, hi]`` of bit
patterns, how many entries lie below ``lo``, how many equal ``lo`` (a heavy value, such as
the zeros of weights a fine-tune left alone, is counted, not stored), and the few entries
inside ``(lo, hi]``, copied out (:class:`BracketTally`). A rank whose value falls in its
bracket is then found exactly among those few (:meth:`BracketTally.resolve`); one that does
not (an unrepresentative first chunk, more entries inside than room for them) falls back to
the radix rounds, so the answer never depends on the sample, only the time taken.

>>> import torch
>>> bits = torch.tensor([5, 1, 7, 3, 3, 9], dtype=torch.int32)
>>> tally = BracketTally(choose_brackets(bits, [2], 6, whole=True))
>>> tally.add(bits)
>>> tally.resolve(2), tally.resolve(4)
((3, 1, 2), None)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

SAMPLE = 1 << 16
"""Sampled entries per bracket round at least (more for tensors over ``SAMPLE * 1024``)."""

SPREAD = 6.0
"""Half a bracket's width, in standard deviations of a sample quantile's rank."""

TOP_BITS = (1 << 31) - 1
"""The largest magnitude bit pattern of a 32-bit float (a NaN)."""


def sample_size(numel: int) -> int:
    """How many entries to sample for a tensor of ``numel`` entries: the bracket's share of
    the tensor shrinks as the square root of the sample."""
    return max(SAMPLE, numel >> 10)


@dataclass(frozen=True)
class Bracket:
    """Bit patterns ``[lo, hi]`` expected to hold some ranks' values; room for ``capacity``
    entries inside ``(lo, hi]``."""

    lo: int
    hi: int
    capacity: int


def choose_brackets(sample: torch.Tensor, ranks: Sequence[int], numel: int,
                    whole: bool = False) -> list[Bracket]:
    """Brackets for the values at ``ranks`` (ascending order, 0-based) of ``numel`` entries,
    from a ``sample`` of their bit patterns (1-D). Overlapping brackets are merged; each
    rank falls in at most one. ``whole``: the sample is every entry, so each bracket is the
    exact value."""
    import numpy as np

    values = np.sort(sample.reshape(-1).cpu().numpy())
    m = values.size
    spans: list[list[int]] = []
    for rank in sorted(ranks):
        if whole:
            first = last = rank
        else:
            q = (rank + 0.5) / numel
            half = SPREAD * math.sqrt(m * q * (1.0 - q)) + 2.0
            first, last = math.floor(q * m - half), math.ceil(q * m + half)
        lo = 0 if first < 0 else int(values[min(first, m - 1)])
        hi = TOP_BITS if last >= m else int(values[max(last, 0)])
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    brackets = []
    for lo, hi in spans:
        inside = int(np.searchsorted(values, hi, "right") - np.searchsorted(values, lo, "right"))
        expected = 0 if whole else inside * numel / max(m, 1)
        brackets.append(Bracket(lo, hi, math.ceil(2.0 * expected) + 1024))
    return brackets


class BracketTally:
    """A bracket round's counts over a tensor's chunks, and the entries inside each bracket.

    :meth:`add` each chunk's bit patterns (or let a C kernel fill the same fields and call
    :meth:`end_chunk`: :mod:`mergekit_like.native.window`), then :meth:`resolve` the ranks.
    ``places``: note each stored entry's position in its chunk, for :meth:`ledger` (chunks
    under 2^31 entries).
    """

    def __init__(self, brackets: Sequence[Bracket], places: bool = False) -> None:
        import torch

        self.brackets = tuple(brackets)
        self.below = [0] * len(brackets)  # entries below lo
        self.at_lo = [0] * len(brackets)  # entries equal to lo
        self.inside = [0] * len(brackets)  # entries in (lo, hi], stored or not
        self.stored = [torch.empty(b.capacity, dtype=torch.int32) for b in brackets]
        self.places = ([torch.empty(b.capacity, dtype=torch.int32) for b in brackets]
                       if places else None)
        self.seen = 0
        # per bracket, at_lo and inside after each chunk
        self.marks: list[list[tuple[int, int]]] = [[] for _ in brackets]

    def add(self, bits: torch.Tensor) -> None:
        """Count the next chunk's magnitude bit patterns (int32) into every bracket."""
        import torch

        flat = bits.reshape(-1)
        for j, b in enumerate(self.brackets):
            self.below[j] += int((flat < b.lo).sum())
            self.at_lo[j] += int((flat == b.lo).sum())
            inside = (flat > b.lo) & (flat <= b.hi)
            found = flat[inside]
            room = b.capacity - self.inside[j]
            if room > 0:
                take = found[:room]
                self.stored[j][self.inside[j]:self.inside[j] + take.numel()] = take
                if self.places is not None:
                    where = inside.nonzero().squeeze(1)[:room].to(torch.int32)
                    self.places[j][self.inside[j]:self.inside[j] + where.numel()] = where
            self.inside[j] += found.numel()
        self.seen += flat.numel()
        self.end_chunk()

    def end_chunk(self) -> None:
        """Note where the chunk just counted ends (for :meth:`ledger`)."""
        for j in range(len(self.brackets)):
            self.marks[j].append((self.at_lo[j], self.inside[j]))

    def resolve(self, rank: int) -> tuple[int, int, int] | None:
        """``(value, entries below it, entries equal to it)`` of the entry at ``rank``, or
        None when its value is outside its bracket or the bracket overflowed (then the radix
        rounds find it)."""
        import numpy as np

        for j, b in enumerate(self.brackets):
            left = rank - self.below[j]
            if left < 0:
                continue
            if left < self.at_lo[j]:
                return b.lo, self.below[j], self.at_lo[j]
            left -= self.at_lo[j]
            if left >= self.inside[j]:
                continue
            if self.inside[j] > b.capacity:
                return None
            found = self.stored[j][:self.inside[j]].numpy()
            value = int(np.partition(found, left)[left])
            return (value, self.below[j] + self.at_lo[j] + int(np.count_nonzero(found < value)),
                    int(np.count_nonzero(found == value)))
        return None

    def ledger(self, value: int) -> Ledger | None:
        """Where the entries equal to ``value`` are, chunk by chunk, when a bracket holds
        ``value`` and stored all its entries (else None). The positions are known for a
        value inside a bracket, not for one equal to its low end (a heavy value, counted
        but not stored)."""
        import numpy as np

        for j, b in enumerate(self.brackets):
            if not b.lo <= value <= b.hi:
                continue
            marks = np.array(self.marks[j], dtype=np.int64).reshape(-1, 2)
            if value == b.lo:
                return Ledger(np.diff(marks[:, 0], prepend=0), None)
            if self.inside[j] > b.capacity or self.places is None:
                return None
            equal = self.stored[j][:self.inside[j]].numpy() == value
            seen = np.concatenate([[0], np.cumsum(equal)])
            return Ledger(np.diff(seen[marks[:, 1]], prepend=0),
                          self.places[j][:self.inside[j]].numpy()[equal].copy())
        return None


@dataclass(frozen=True)
class Ledger:
    """How many entries equal one value in each chunk (``counts``), and the positions of
    those entries in their chunks, chunk after chunk (``places``; None: not known)."""

    counts: np.ndarray
    places: np.ndarray | None

    def places_in(self, chunk: int, ks: Sequence[int]) -> list[int] | None:
        """The positions in chunk ``chunk`` of its ``k``-th such entry for each ``k`` of
        ``ks`` (each below the chunk's count), or None when the positions are not known."""
        if self.places is None:
            return None
        first = int(self.counts[:chunk].sum())
        return [int(self.places[first + k]) for k in ks]

"""Exact rank selection over a tensor seen in chunks: which magnitudes lie in a rank window.

The magnitude trims (TIES, Model Breadcrumbs, SCE) keep the entries whose rank lies in a
window ``[lo, hi)``, ranked by magnitude ascending; equal magnitudes as ``ties`` says:
``"ascending"``, by position, earlier first (a stable ascending sort); ``"descending"``,
later first, so that ``[n - k, n)`` keeps the first ``k`` of a stable descending sort;
``"cpu_ascending"`` / ``"cpu_descending"``, as torch's unstable CPU sort orders them, and
``"cpu_topk"`` (a window ``[n - k, n)``) as torch's CPU ``topk(k)`` picks them, where a cut
falls among them (:mod:`.introsort`: mergekit's trims, :mod:`.sparsify`, and ``sce``).
Exactly ``hi - lo`` entries are kept, on every device and for every chunking.

The window's two boundary values are found by radix select over the magnitudes' bit
patterns (non-negative floats order as their bits do), 16 bits per round with a 65536-bin
histogram: 1 round for bfloat16/float16, 2 for float32, 4 for float64. A window made with
``bracket=True`` first tries one cheaper round that brackets the values from a sample
(:mod:`.rank_bracket`; the C kernel of :mod:`mergekit_like.native.window` runs it), and
falls back to the radix rounds for a value it misses. A tensor too large to hold is read
once per round in row chunks (:meth:`RankWindow.observe`); then :meth:`RankWindow.mask`
marks the kept entries chunk by chunk, in order, counting those equal to a boundary value.

>>> import torch
>>> rank_window_mask(torch.tensor([3.0, 1.0, 3.0, 2.0]), 2, 4).tolist()
[True, False, True, False]
>>> rank_window_mask(torch.tensor([3.0, 1.0, 3.0, 2.0]), 1, 3).tolist()
[True, False, False, True]
>>> rank_window_mask(torch.tensor([3.0, 1.0, 3.0, 2.0]), 1, 3, ties="descending").tolist()
[False, False, True, True]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mergekit_like.methods.introsort import TieReplay, one_run
from mergekit_like.methods.radix import (
    BINS,
    DIGIT,
    BitChunk,
    MagnitudeChunk,
    add_counts,
    counts,
    magnitude_bits,
    narrow_bits,
    radix_rounds,
)
from mergekit_like.methods.rank_bracket import BracketTally, Ledger, choose_brackets, sample_size

if TYPE_CHECKING:
    import torch

TieOrder = Literal["ascending", "descending", "cpu_ascending", "cpu_descending", "cpu_topk"]

BRACKET_ROUNDS = 2
"""Bracket rounds a ``bracket=True`` window tries before its radix rounds."""


class _Target:
    """The search for the value at one rank: the bits found so far and the ranks below."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.prefix = 0  # the digits found so far
        self.below = 0  # entries known to lie below the prefix
        self.equal = 0  # entries in the prefix's bin (after the last digit: equal to it)
        self.round = 0  # digits found so far

    def descend(self, hist: torch.Tensor) -> None:
        """Take the next digit: the bin of ``hist`` (counts under the prefix) holding the rank."""
        import torch

        cum = hist.cumsum(0)
        left = self.rank - self.below
        digit = int(torch.searchsorted(cum, torch.tensor(left, dtype=cum.dtype), right=True))
        self.below += int(cum[digit]) - int(hist[digit])
        self.equal = int(hist[digit])
        self.prefix = (self.prefix << DIGIT) | digit
        self.round += 1


class RankWindow:
    """Keep the entries ranked ``[lo, hi)`` by ``(magnitude, position)`` of ``numel`` entries;
    equal magnitudes ranked by position as ``ties`` says (see the module docstring).

    Use: for each round in ``range(rounds)`` that :meth:`wants`, :meth:`observe` every chunk
    of magnitudes in order, then :meth:`finish` the round; then :meth:`mask` each chunk in
    order (again after :meth:`restart`, for another pass over the chunks).

    ``bracket``: round 0 brackets the boundary values from a sample of the first chunk
    (:mod:`.rank_bracket`), and samples every chunk as it goes; round 1, wanted only where
    round 0 missed (a first chunk unlike the rest), brackets again from that sample of the
    whole tensor. A value a bracket pins settles every later round for that boundary.
    The radix rounds follow. The first radix round also guesses, from the first chunk,
    which of its bins will hold each window boundary, and counts the next digits of those
    bins as it goes. A guess that proves right settles the second radix round too, which is
    then not wanted. Guessing from the whole tensor (one chunk) is always right.

    A ``cpu_*`` window ends with one more round, wanted only where a cut falls among equal
    magnitudes: it gathers the tensor's magnitudes for :class:`.introsort.TieReplay`.

    A boundary value a bracket pinned comes with that round's :class:`.rank_bracket.Ledger`:
    the mask passes then take each chunk's count of its equal entries, and their positions,
    from :meth:`known_counts` and :meth:`known_places` instead of counting them again.
    """

    def __init__(self, numel: int, lo: int, hi: int, width: int, bracket: bool = False,
                 ties: TieOrder = "ascending") -> None:
        self.numel, self.lo, self.hi, self.width = numel, max(0, lo), min(numel, hi), width
        self.ties = ties
        self._targets: dict[int, _Target] = {}
        if self.lo < self.hi:
            if self.lo > 0:
                self._targets[self.lo] = _Target(self.lo)
            if self.hi < numel:
                self._targets[self.hi - 1] = _Target(self.hi - 1)
        # bracket rounds before the radix rounds, and a tie replay round after them
        self._first = BRACKET_ROUNDS * int(bracket and width == 32 and bool(self._targets))
        self.rounds = radix_rounds(width) + self._first if self._targets else 0
        cpu = ties.startswith("cpu") and width <= 32 and bool(self._targets)
        self._replay_round = self.rounds if cpu else -1
        self.rounds += int(cpu)
        self._replay: TieReplay | None = None  # wanted where a cut falls among equal entries
        self._picks: dict[int, torch.Tensor] = {}  # the replay's kept entries, per value
        self._tally: BracketTally | None = None
        self._spread: torch.Tensor | None = None  # round 0's sample of every chunk
        self._spread_len = 0
        self._seen_round = 0
        self._hists: dict[int, torch.Tensor] = {}  # this round's histogram per prefix
        self._guesses: tuple[int, ...] | None = None  # the first round's guessed bins
        # (value bits, entries below it, entries equal to it), ascending
        self._bounds: list[tuple[int, int, int]] = []
        self._equal_seen: dict[int, int] = {}
        self._ledgers: dict[int, Ledger] = {}  # per value a bracket pinned
        self._chunk = 0  # the chunks a mask pass has taken edges of

    def wants(self, round_: int) -> bool:
        """Whether round ``round_`` may still be needed: once it is not (a right guess
        settles the second), it stays so."""
        if round_ == self._replay_round:
            return self._replay is not None
        radix = round_ - self._first
        return round_ < self.rounds and any(t.round <= max(radix, 0)
                                            for t in self._targets.values())

    def observe(self, round_: int, mags: torch.Tensor) -> None:
        """Count the next chunk's magnitudes into round ``round_``."""
        self.observe_chunk(round_, BitChunk(magnitude_bits(mags.reshape(-1))))

    def observe_chunk(self, round_: int, chunk: MagnitudeChunk) -> None:
        """Like :meth:`observe`, for a chunk of magnitudes seen through a
        :class:`MagnitudeChunk`."""
        if round_ == self._replay_round:
            assert self._replay is not None
            self._replay.add(chunk.flat_bits())
            return
        if round_ < self._first:
            import torch

            share = -(-sample_size(self.numel) * chunk.numel // self.numel)
            if self._tally is None:
                open_ranks = [r for r, t in self._targets.items() if t.round == 0]
                if round_ == 0:
                    sample = chunk.sample(sample_size(self.numel))
                    whole = sample.numel() == self.numel
                    # one buffer for the tensor: small allocations kept across the chunks
                    # would fragment the heap that the chunks' large temporaries reuse
                    chunks = -(-self.numel // chunk.numel)
                    self._spread = torch.empty(sample_size(self.numel) + chunks,
                                               dtype=torch.int32)
                else:
                    sample, whole = self._spread[:self._spread_len], False
                self._tally = BracketTally(choose_brackets(sample, open_ranks, self.numel,
                                                           whole=whole),
                                           places=self.numel < 1 << 31)
            if round_ == 0 and self._spread is not None:
                taken = chunk.sample(share)[:min(share, len(self._spread) - self._spread_len)]
                self._spread[self._spread_len:self._spread_len + len(taken)] = taken
                self._spread_len += len(taken)
            chunk.tally(self._tally)
            return
        round_ -= self._first
        shift = self.width - DIGIT * (round_ + 1)
        if round_ > 0:
            for prefix in {t.prefix for t in self._targets.values() if t.round == round_}:
                self._count(prefix, chunk.digits(shift, prefix, ()), BINS + 1)
            return
        self._seen_round += chunk.numel
        if self._guesses is None:
            self._guesses = ()
            if radix_rounds(self.width) > 1:  # guess from this chunk where each boundary falls
                cum = counts(chunk.digits(shift, None, ()), BINS).cumsum(0)
                spots = [min(BINS - 1, int((cum <= t.rank * chunk.numel // self.numel).sum()))
                         for t in self._targets.values() if t.round == 0]
                self._guesses = tuple(sorted(set(spots)))
        self._count(-1, chunk.digits(shift, None, self._guesses),
                    BINS * (1 + len(self._guesses)))

    def _count(self, prefix: int, digits: torch.Tensor, bins: int) -> None:
        import torch

        hist = self._hists.get(prefix)
        if hist is None:  # one buffer per round, added into chunk after chunk
            hist = self._hists[prefix] = torch.zeros(bins, dtype=torch.int64,
                                                     device=digits.device)
        add_counts(hist, digits)

    def finish(self, round_: int) -> None:
        """Close round ``round_``: descend each target into the bin holding its rank."""
        if round_ == self._replay_round:  # (a round this window did not want: nothing)
            if self._replay is not None:
                self._picks, self._replay = self._replay.picks(self.boundary_values()), None
        elif round_ < self._first:
            self._finish_bracket()
            if round_ > 0 or all(t.round > 0 for t in self._targets.values()):
                self._spread, self._spread_len = None, 0
        else:
            self._finish_radix(round_ - self._first)
        if all(t.round == radix_rounds(self.width) for t in self._targets.values()):
            self._bounds = sorted({(t.prefix, t.below, t.equal)
                                   for t in self._targets.values()})
            if round_ < self._replay_round and self._cut_among_ties():
                self._replay = TieReplay(self.numel, self.lo, self.hi,
                                         self.ties in ("cpu_descending", "cpu_topk"),
                                         topk=self.ties == "cpu_topk")
        self.restart()

    def _cut_among_ties(self) -> bool:
        """Whether the window keeps some but not all entries of a boundary value."""
        for _, below, equal in self._bounds:
            first, stop = (min(max(k, 0), equal) for k in self.kept_ties(below, equal))
            if first < stop and (first > 0 or stop < equal):
                return True
        return False

    def _finish_bracket(self) -> None:
        tally, self._tally = self._tally, None
        seen = 0 if tally is None else tally.seen
        if seen != self.numel:
            raise ValueError(f"rank window over {self.numel} entries saw {seen}")
        assert tally is not None
        for t in self._targets.values():
            found = tally.resolve(t.rank) if t.round == 0 else None
            if found is not None:
                t.prefix, t.below, t.equal = found
                t.round = radix_rounds(self.width)
                ledger = tally.ledger(t.prefix)
                if ledger is not None:
                    self._ledgers[t.prefix] = ledger

    def _finish_radix(self, round_: int) -> None:
        import torch

        if round_ == 0 and self._seen_round != self.numel:
            raise ValueError(f"rank window over {self.numel} entries saw {self._seen_round}")
        hists = {prefix: h.cpu() for prefix, h in self._hists.items()}
        self._hists = {}
        empty = torch.zeros(BINS, dtype=torch.int64)
        if round_ == 0:
            first = hists.get(-1, empty)
            top = first[:BINS].clone()
            below_guess = {}
            for k, guess in enumerate(self._guesses or ()):
                below_guess[guess] = first[BINS * (k + 1):BINS * (k + 2)]
                top[guess] += below_guess[guess].sum()
            for t in self._targets.values():
                if t.round > 0:  # pinned by the bracket round
                    continue
                t.descend(top)
                if t.prefix in below_guess and t.round < radix_rounds(self.width):
                    t.descend(below_guess[t.prefix])
        else:
            for t in self._targets.values():
                if t.round == round_:
                    t.descend(hists.get(t.prefix, empty)[:BINS])

    def restart(self) -> None:
        """Start a new pass of :meth:`mask` calls from the first chunk."""
        self._equal_seen = {value: 0 for value, _, _ in self._bounds}
        self._chunk = 0

    def known_counts(self) -> list[int] | None:
        """The next chunk's counts of entries equal to each of :meth:`boundary_values`,
        where the bracket rounds' ledgers know them all (else None: count them)."""
        values = self.boundary_values()
        if not all(v in self._ledgers for v in values):
            return None
        return [int(self._ledgers[v].counts[self._chunk]) for v in values]

    def known_places(self, value: int, ks: Sequence[int]) -> list[int] | None:
        """Like ``places`` of :meth:`.sparsify.TrimState.rule`, for the chunk whose
        :meth:`edges` were taken last, where the ledger of ``value`` knows them."""
        ledger = self._ledgers.get(value)
        return None if ledger is None else ledger.places_in(self._chunk - 1, ks)

    def kept_ties(self, below: int, equal: int) -> tuple[int, int]:
        """Of the ``equal`` entries of a magnitude with ``below`` below it, the window keeps
        the ``k``-th (in position order) for ``first <= k < stop``."""
        if self.ties in ("ascending", "cpu_ascending"):  # the k-th has rank below + k
            return self.lo - below, self.hi - below
        return below + equal - self.hi, below + equal - self.lo  # rank below + equal - 1 - k

    def boundary_values(self) -> list[int]:
        """The bit patterns of the window's boundary magnitudes (after the last round)."""
        return [value for value, _, _ in self._bounds]

    def edges(self, counts: Sequence[int]) -> Edges:
        """The next chunk's :class:`Edges`, given how many of its entries equal each of
        :meth:`boundary_values`; call once per chunk, in order."""
        lo_edge = hi_edge = None
        split, picks = [], []
        self._chunk += 1
        for (value, below, equal), count in zip(self._bounds, counts, strict=True):
            seen = self._equal_seen[value]  # such entries in the chunks before this one
            self._equal_seen[value] += count
            first, stop = (min(max(k - seen, 0), count) for k in self.kept_ties(below, equal))
            if value in self._picks:  # kept as the replayed sort keeps them
                pick = self._picks[value][seen:seen + count]
                first, stop = one_run(pick)
                if first < 0:
                    picks.append((value, pick))
            inclusive = count > 0 and first == 0 and stop == count
            if count and not inclusive and first < stop:
                split.append((value, first, stop, count))  # the window's edge is in this chunk
            if self.lo > 0 and value == self._targets[self.lo].prefix:
                lo_edge = value if inclusive else value + 1
            if self.hi < self.numel and value == self._targets[self.hi - 1].prefix:
                hi_edge = value + 1 if inclusive else value
        top = (1 << (self.width - 1)) - 1  # the largest bit pattern
        if lo_edge is not None and lo_edge > top:
            return Edges(None, 0)  # above every bit pattern: nothing is kept
        if hi_edge is not None and hi_edge > top:
            hi_edge = None  # above every bit pattern: no upper bound
        return Edges(lo_edge, hi_edge, tuple(split), tuple(picks))

    def mask(self, mags: torch.Tensor, edges: Edges | None = None) -> torch.Tensor:
        """Which of the next chunk's entries are kept: 1 or 0, in ``mags``'s dtype and shape.

        A float mask multiplies a task vector several times faster than a boolean one.
        Entries equal to a boundary value are kept or dropped by rank; only in the chunk
        where the window's edge falls among them is each one looked at. ``edges``: the
        chunk's :meth:`edges`, when the caller has taken them already.
        """
        import torch

        if self.lo >= self.hi:
            return torch.zeros_like(mags)
        if not self._bounds:
            return torch.ones_like(mags)
        if edges is None:
            known, bits = self.known_counts(), narrow_bits(mags, *self.boundary_values())
            edges = self.edges(known if known is not None else [
                int(torch.count_nonzero(bits == value)) for value in self.boundary_values()])
        bits = narrow_bits(mags, edges.lo, edges.hi, *(v[0] for v in (*edges.split, *edges.picks)))
        keep = torch.empty_like(mags)
        if edges.lo is not None:
            torch.ge(bits, edges.lo, out=keep)
        if edges.hi is not None:
            upper = keep if edges.lo is None else torch.empty_like(mags)
            torch.lt(bits, edges.hi, out=upper)
            if upper is not keep:
                keep.mul_(upper)
        elif edges.lo is None:
            keep.fill_(1.0)
        for value, first, stop, _ in edges.split:
            where = (bits == value).view(-1).nonzero().squeeze(1)
            keep.view(-1)[where[first:stop]] = 1.0
        for value, pick in edges.picks:
            where = (bits == value).view(-1).nonzero().squeeze(1)
            keep.view(-1)[where[pick.to(where.device)]] = 1.0
        return keep


@dataclass(frozen=True)
class Edges:
    """A rank window within one chunk: keep ``lo <= bits < hi`` (None: unbounded).

    ``split``: ``(value, first, stop, count)`` of a boundary value whose ``count`` equal
    entries in this chunk straddle the window's edge: the chunk's ``k``-th such entry (in
    position order) is kept for ``first <= k < stop``. ``picks``: ``(value, kept)`` where a
    replayed sort keeps no run of them: ``kept[k]`` says whether the ``k``-th is kept.
    """

    lo: int | None
    hi: int | None
    split: tuple[tuple[int, int, int, int], ...] = ()
    picks: tuple[tuple[int, torch.Tensor], ...] = ()


def rank_window_mask(mags: torch.Tensor, lo: int, hi: int,
                     ties: TieOrder = "ascending") -> torch.Tensor:
    """Whole-tensor :class:`RankWindow`: booleans keeping ranks ``[lo, hi)`` of ``mags``."""
    import torch

    window = RankWindow(mags.numel(), lo, hi, torch.finfo(mags.dtype).bits, ties=ties)
    for r in range(window.rounds):
        if window.wants(r):
            window.observe(r, mags)
            window.finish(r)
    return window.mask(mags).bool()

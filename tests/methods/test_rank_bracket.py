"""The bracket round of a rank window: exact values at ranks, whatever the sample says."""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods.radix import magnitude_bits
from mergekit_like.methods.rank_bracket import SAMPLE, BracketTally, choose_brackets
from mergekit_like.methods.rank_select import BitChunk, RankWindow
from tests.methods.test_rank_select import by_sort


def bits_of(mags: torch.Tensor) -> torch.Tensor:
    return magnitude_bits(mags.float().abs())


def fine_tune_deltas(n: int, seed: int, unchanged: float = 0.3) -> torch.Tensor:
    """|x - base| as bfloat16 fine-tunes give it: few distinct values, many exact zeros."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=gen).bfloat16().float()
    x = (base + 0.01 * torch.randn(n, generator=gen)).bfloat16().float()
    same = torch.rand(n, generator=gen) < unchanged
    x[same] = base[same]
    return (x - base).abs()


def reference(bits: torch.Tensor, rank: int) -> tuple[int, int, int]:
    """(value at rank, entries below it, entries equal to it) by a sort."""
    value = int(torch.sort(bits).values[rank])
    return value, int((bits < value).sum()), int((bits == value).sum())


def tally(bits: torch.Tensor, ranks: list[int], first: int, parts: int = 3) -> BracketTally:
    sample = bits[:first][::max(1, first // SAMPLE)]
    t = BracketTally(choose_brackets(sample, ranks, bits.numel(),
                                     whole=sample.numel() == bits.numel()))
    for part in bits.tensor_split(parts):
        t.add(part)
    return t


@pytest.mark.parametrize("kind", ["continuous", "fine_tune", "constant"])
def test_resolved_ranks_are_exact(kind):
    n = 200_000
    gen = torch.Generator().manual_seed(1)
    mags = {"continuous": torch.randn(n, generator=gen).abs(),
            "fine_tune": fine_tune_deltas(n, 1),
            "constant": torch.full((n,), 0.5)}[kind]
    bits = bits_of(mags)
    ranks = [0, 1, n // 10, n // 2, n - n // 100, n - 1]
    t = tally(bits, ranks, first=n // 3)
    for rank in ranks:
        assert t.resolve(rank) == reference(bits, rank), rank  # iid: every bracket holds
    assert t.seen == n
    if kind != "constant":  # (there, the bracket of rank 0 starts at 0 and holds them all)
        assert sum(t.inside) < n // 10  # few entries stored


def test_a_whole_sample_pins_the_exact_values():
    bits = bits_of(torch.randn(5000, generator=torch.Generator().manual_seed(2)))
    t = tally(bits, [7, 4000], first=5000)
    assert [b.lo == b.hi for b in t.brackets] == [True, True]
    assert t.resolve(7) == reference(bits, 7) and t.resolve(4000) == reference(bits, 4000)
    assert t.inside == [0, 0]


def test_nan_and_infinity_rank_above_every_number():
    mags = torch.randn(100_000, generator=torch.Generator().manual_seed(3)).abs()
    mags[::7] = float("nan")
    mags[1::7] = float("inf")
    bits = bits_of(mags)
    ranks = [50_000, 80_000, 99_999]
    t = tally(bits, ranks, first=30_000)
    assert [t.resolve(r) for r in ranks] == [reference(bits, r) for r in ranks]


def test_a_value_outside_its_bracket_is_not_resolved():
    n = 100_000
    bits = bits_of(torch.cat([torch.full((n // 10,), 1e-3), torch.ones(n - n // 10)])
                   * (1 + torch.rand(n, generator=torch.Generator().manual_seed(4))))
    t = tally(bits, [n // 2], first=n // 10)  # the first tenth: all small
    assert t.resolve(n // 2) is None


def test_an_overflowing_bracket_is_not_resolved_but_counts_exactly():
    n = 100_000
    gen = torch.Generator().manual_seed(5)
    head = torch.rand(n // 10, generator=gen)  # spread over [0, 1)
    tail = 0.5 + 1e-4 * torch.rand(n - n // 10, generator=gen)  # all near the median
    bits = bits_of(torch.cat([head, tail]))
    t = tally(bits, [n // 2], first=n // 10)
    lo, hi = t.brackets[0].lo, t.brackets[0].hi
    assert t.inside[0] > t.brackets[0].capacity
    assert t.inside[0] == int(((bits > lo) & (bits <= hi)).sum())
    assert t.below[0] == int((bits < lo).sum())
    assert t.resolve(n // 2) is None


def windowed(mags: torch.Tensor, lo: int, hi: int, size: int) -> tuple[torch.Tensor, list]:
    """A bracketed window over chunks of ``size``: the kept entries, and the rounds after
    the first that were wanted (1: the second bracket round; 2, 3: the radix rounds)."""
    window = RankWindow(mags.numel(), lo, hi, 32, bracket=True)
    assert window.rounds == 4
    parts = [BitChunk(magnitude_bits(p)) for p in mags.reshape(-1).split(size)]
    later = []
    for round_ in range(window.rounds):
        if window.wants(round_):
            if round_:
                later.append(round_)
            for part in parts:
                window.observe_chunk(round_, part)
            window.finish(round_)
    kept = torch.cat([window.mask(p.bits.view(torch.float32)) for p in parts]).bool()
    return kept.view_as(mags), later


@pytest.mark.parametrize(("lo_frac", "hi_frac"), [(0.5, 1.0), (0.1, 0.99), (0.0, 0.3)])
def test_bracketed_windows_match_a_stable_sort(lo_frac, hi_frac):
    n = 150_000
    for mags in (torch.randn(n, generator=torch.Generator().manual_seed(6)).abs(),
                 fine_tune_deltas(n, 6)):
        lo, hi = int(lo_frac * n), int(hi_frac * n)
        kept, later = windowed(mags, lo, hi, 40_000)
        assert torch.equal(kept, by_sort(mags, lo, hi))
        assert later == []


def test_a_first_chunk_unlike_the_rest_takes_the_second_bracket_round():
    n = 120_000
    gen = torch.Generator().manual_seed(7)
    mags = torch.cat([1e-3 * torch.rand(30_000, generator=gen),
                      torch.rand(n - 30_000, generator=gen)])
    kept, later = windowed(mags, n // 2, n, 30_000)
    assert later == [1]  # bracketed again from a sample of every chunk
    assert torch.equal(kept, by_sort(mags, n // 2, n))


def test_brackets_that_miss_twice_fall_back_to_the_radix_rounds(monkeypatch):
    from mergekit_like.methods import rank_select
    from mergekit_like.methods.rank_bracket import Bracket

    def useless(sample, ranks, numel, whole=False):  # a bracket holding no magnitude
        return [Bracket(0, 0, 0)]

    monkeypatch.setattr(rank_select, "choose_brackets", useless)
    mags = torch.rand(50_000, generator=torch.Generator().manual_seed(8)) + 0.5
    for lo, hi in ((25_000, 50_000), (5_000, 45_000)):
        kept, later = windowed(mags, lo, hi, 12_000)
        assert later[:2] == [1, 2]  # both bracket rounds, then the radix rounds
        assert torch.equal(kept, by_sort(mags, lo, hi))


def test_only_32_bit_windows_bracket():
    assert RankWindow(1000, 500, 1000, 16, bracket=True).rounds == 1
    assert RankWindow(1000, 500, 1000, 32, bracket=True).rounds == 4
    assert RankWindow(1000, 500, 1000, 64, bracket=True).rounds == 4
    assert RankWindow(1000, 0, 1000, 32, bracket=True).rounds == 0  # nothing to find


def chunk_facts(bits: torch.Tensor, value: int, parts: int) -> tuple[list[int], list[list[int]]]:
    """Per chunk of ``bits.tensor_split(parts)``: how many entries equal ``value``, and where."""
    counts, places = [], []
    for part in bits.tensor_split(parts):
        where = (part == value).nonzero().squeeze(1).tolist()
        counts.append(len(where))
        places.append(where)
    return counts, places


@pytest.mark.parametrize("rank_frac", [0.5, 0.97])
def test_a_ledger_knows_each_chunks_equal_entries_and_where_they_are(rank_frac):
    n = 200_000
    gen = torch.Generator().manual_seed(11)
    bits = bits_of(torch.rand(n, generator=gen).mul_(4000).floor_())  # each value ~50 times
    rank = int(rank_frac * n)
    t = BracketTally(choose_brackets(bits[:50_000][::2], [rank], n), places=True)
    for part in bits.tensor_split(4):
        t.add(part)
    value, _, _ = t.resolve(rank)
    assert value > t.brackets[0].lo  # inside the bracket: positions stored
    ledger = t.ledger(value)
    counts, places = chunk_facts(bits, value, 4)
    assert ledger.counts.tolist() == counts
    assert sum(counts) > 20
    for chunk, where in enumerate(places):
        ks = [0, len(where) // 2, len(where) - 1] if where else []
        assert ledger.places_in(chunk, ks) == [where[k] for k in ks]


def test_a_ledger_of_a_brackets_low_end_counts_without_places():
    bits = torch.tensor([0, 0, 5, 0, 7, 0, 9, 3, 0, 5], dtype=torch.int32)
    from mergekit_like.methods.rank_bracket import Bracket

    t = BracketTally([Bracket(0, 6, 100)], places=True)
    for part in bits.tensor_split(3):  # [0, 0, 5, 0] [7, 0, 9] [3, 0, 5]
        t.add(part)
    low = t.ledger(0)
    assert low.counts.tolist() == [3, 1, 1]
    assert low.places_in(1, [0]) is None  # equal to lo: counted, not stored
    five = t.ledger(5)
    assert five.counts.tolist() == [1, 0, 1]
    assert five.places_in(0, [0]) == [2]
    assert five.places_in(2, [0]) == [2]
    assert t.ledger(7) is None  # outside the bracket
    assert BracketTally([Bracket(0, 6, 100)]).ledger(0) is not None  # counts need no places
    no_places = BracketTally([Bracket(0, 6, 100)])
    no_places.add(bits)
    assert no_places.ledger(5) is None


def test_an_overflowing_bracket_has_no_ledger_inside():
    from mergekit_like.methods.rank_bracket import Bracket

    t = BracketTally([Bracket(0, 9, 2)], places=True)
    t.add(torch.tensor([0, 5, 5, 5, 0], dtype=torch.int32))
    assert t.ledger(5) is None
    assert t.ledger(0).counts.tolist() == [2]


def test_a_bracketed_window_never_counts_a_chunk_again(monkeypatch):
    """Masks of a bracket-settled window take their counts from the ledger: the same mask as
    a stable sort, with no chunk's equal entries counted by the mask pass."""
    n = 150_000
    mags = fine_tune_deltas(n, 12)
    calls = []
    real = torch.count_nonzero

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    window = RankWindow(n, n // 2, n, 32, bracket=True)
    parts = [BitChunk(magnitude_bits(p)) for p in mags.split(40_000)]
    for part in parts:
        window.observe_chunk(0, part)
    window.finish(0)
    assert not window.wants(1)
    monkeypatch.setattr(torch, "count_nonzero", counting)
    kept = torch.cat([window.mask(p.bits.view(torch.float32)) for p in parts]).bool()
    assert calls == []
    assert torch.equal(kept, by_sort(mags, n // 2, n))

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


def reference(bits: torch.Tensor, rank: int) -> tuple[int, int]:
    """(value at rank, entries below it) by a sort."""
    value = int(torch.sort(bits).values[rank])
    return value, int((bits < value).sum())


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

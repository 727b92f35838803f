"""Rank windows over magnitudes seen whole or in chunks, against a stable sort."""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods.draws import Draws
from mergekit_like.methods.radix import magnitude_bits, narrow_bits
from mergekit_like.methods.rank_select import RankWindow, rank_window_mask
from mergekit_like.methods.reductions import BlockSums, stable_sum
from tests.methods.draws import documented_draws


def by_sort(mags: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Ranks [lo, hi) of (magnitude, position): a stable ascending sort, sliced."""
    order = torch.sort(mags.reshape(-1), stable=True).indices
    keep = torch.zeros(mags.numel(), dtype=torch.bool)
    keep[order[lo:hi]] = True
    return keep.view_as(mags)


def chunked(mags: torch.Tensor, lo: int, hi: int, size: int) -> torch.Tensor:
    window = RankWindow(mags.numel(), lo, hi, torch.finfo(mags.dtype).bits)
    parts = list(mags.reshape(-1).split(size))
    for round_ in range(window.rounds):
        for part in parts:
            window.observe(round_, part)
        window.finish(round_)
    first = torch.cat([window.mask(p) for p in parts]).bool()
    window.restart()  # a second pass over the chunks marks the same entries
    assert torch.equal(torch.cat([window.mask(p) for p in parts]).bool(), first)
    return first.view_as(mags)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
def test_windows_match_a_stable_sort_whole_and_in_chunks(dtype, ties):
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        n = int(torch.randint(1, 2500, (1,), generator=gen))
        mags = (torch.randint(0, 6, (n,), generator=gen) * 0.25 if ties
                else torch.randn(n, generator=gen).abs()).to(dtype)
        lo = int(torch.randint(0, n + 1, (1,), generator=gen))
        hi = int(torch.randint(lo, n + 1, (1,), generator=gen))
        want = by_sort(mags, lo, hi)
        assert torch.equal(rank_window_mask(mags, lo, hi), want)
        assert torch.equal(chunked(mags, lo, hi, 97), want)
        assert int(want.sum()) == hi - lo


def test_equal_magnitudes_are_ranked_by_position():
    mags = torch.full((10,), 2.0)
    assert rank_window_mask(mags, 7, 10).tolist() == [False] * 7 + [True] * 3  # ties: the last 3
    assert chunked(mags, 2, 5, 3).tolist() == [False, False, True, True, True] + [False] * 5


def test_a_window_seeing_the_wrong_number_of_entries_is_an_error():
    window = RankWindow(10, 2, 8, 32)
    window.observe(0, torch.ones(9))
    with pytest.raises(ValueError, match="saw 9"):
        window.finish(0)


def test_bits_order_like_the_floats_and_nan_ranks_last():
    mags = torch.tensor([0.0, 1e-30, 0.5, 1.0, 3.0e38, float("inf"), float("nan")])
    bits = magnitude_bits(mags)
    assert torch.equal(bits.argsort(), torch.arange(7))


@pytest.mark.parametrize("size", [1, 1000, 4096, 5000, 10**6])
def test_block_sums_in_chunks_equal_stable_sum(size):
    x = torch.rand(3 * 4096 + 17, generator=torch.Generator().manual_seed(1))
    sums = BlockSums(x.numel())
    for part in x.split(size):
        sums.add(part)
    assert torch.equal(sums.total(), stable_sum(x))


def test_draws_follow_their_documented_hash_and_do_not_depend_on_the_slice():
    numel = 3 * 2**20 + 123
    draws = Draws(3, "w", 1, numel)
    whole = draws.take(0, numel, "cpu")
    assert torch.equal(whole, documented_draws(3, "w", 1, (numel,)))
    assert torch.equal(draws.take(2**20 - 5, 2**20 + 5, "cpu"), whole[2**20 - 5:2**20 + 5])
    far = 2**32 + 7  # the high half of the index counts too
    assert not torch.equal(draws.take(far, far + 100, "cpu"), whole[7:107])
    assert not torch.equal(Draws(3, "w", 0, numel).take(0, 100, "cpu"), whole[:100])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_narrow_bits_compare_as_the_int32_bits_for_every_16_bit_value(dtype):
    """The int16 view of 16-bit magnitudes answers ==, < and >= as the int32 bit patterns
    do, for every magnitude (NaN included) and every value it is compared with."""
    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype).abs()
    wide = magnitude_bits(every)
    for value in (0, 1, 0x3F80, 0x7F7F, 0x7F80, 0x7FC0, 0x7FFF, -3):
        narrow = narrow_bits(every, value, None)
        assert narrow.dtype == torch.int16
        for op in (torch.eq, torch.lt, torch.ge):
            assert torch.equal(op(narrow, value), op(wide, value))
    assert narrow_bits(every, 1 << 15).dtype == torch.int32  # a value past int16: the copy
    assert narrow_bits(every.float(), 3).dtype == torch.int32

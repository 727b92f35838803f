"""The C bracket pass counts and copies out exactly what the torch pass does."""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods.radix import magnitude_bits
from mergekit_like.methods.rank_bracket import Bracket, BracketTally
from mergekit_like.native.window import WindowPasses

SCAN = WindowPasses.open()
pytestmark = pytest.mark.skipif(SCAN.lib is None, reason=f"no C kernel: {SCAN.error}")


@pytest.fixture(params=["avx2", "scalar"])
def scan(request):
    """The kernel on each of its paths (AVX2 where the CPU has it; one entry at a time)."""
    assert SCAN.lib is not None
    if request.param == "avx2" and not SCAN.avx2:
        pytest.skip("no AVX2 here")
    SCAN.lib.mk_bracket_init(int(request.param == "avx2"))
    yield SCAN
    SCAN.lib.mk_bracket_init(1)


def inputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=gen).bfloat16().float()
    x = (base + 0.01 * torch.randn(n, generator=gen)).bfloat16().float()
    x[::5] = base[::5]  # zero deltas
    if n > 20:
        x[3], base[3] = float("nan"), 1.0
        x[4], base[4] = float("inf"), 0.0
        x[5], base[5] = -0.0, 0.0
        x[6], base[6] = 1e-40, 0.0  # a subnormal delta
    return x, base


def brackets_around(x: torch.Tensor, base: torch.Tensor, quantiles, capacity=None):
    bits = torch.sort(magnitude_bits((x - base).abs())).values
    n = bits.numel()
    out = []
    for q0, q1 in quantiles:
        lo, hi = int(bits[int(q0 * (n - 1))]), int(bits[int(q1 * (n - 1))])
        out.append(Bracket(lo, hi, capacity if capacity is not None else n))
    return out


def same(a: BracketTally, b: BracketTally) -> None:
    assert (a.below, a.at_lo, a.inside, a.seen) == (b.below, b.at_lo, b.inside, b.seen)
    for stored_a, stored_b, inside, bracket in zip(a.stored, b.stored, a.inside, a.brackets,
                                                   strict=True):
        kept = min(inside, bracket.capacity)
        assert torch.equal(stored_a[:kept], stored_b[:kept])
    assert a.marks == b.marks
    for places_a, places_b, inside, bracket in zip(a.places, b.places, a.inside, a.brackets,
                                                   strict=True):
        kept = min(inside, bracket.capacity)
        assert torch.equal(places_a[:kept], places_b[:kept])


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 200_003])
@pytest.mark.parametrize("quantiles", [[(0.45, 0.55)], [(0.05, 0.08), (0.9, 0.99)],
                                       [(0.0, 1.0)]])
def test_the_kernel_tallies_as_torch_does(scan, n, quantiles):
    x, base = inputs(n, n)
    brackets = brackets_around(x, base, quantiles[:1] if n < 3 else quantiles)
    want, got = BracketTally(brackets, places=True), BracketTally(brackets, places=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # 200_003 entries: three threads of the kernel
    try:
        for part_x, part_b in zip(x.tensor_split(3), base.tensor_split(3), strict=True):
            want.add(magnitude_bits((part_x - part_b).abs()))
            scan.tally(got, part_x.contiguous(), part_b.contiguous())
    finally:
        torch.set_num_threads(threads)
    same(want, got)


def test_entries_past_the_capacity_are_counted_not_stored(scan):
    x, base = inputs(100_000, 1)
    brackets = brackets_around(x, base, [(0.2, 0.8)], capacity=5000)
    want, got = BracketTally(brackets, places=True), BracketTally(brackets, places=True)
    want.add(magnitude_bits((x - base).abs()))
    scan.tally(got, x, base)
    assert got.inside[0] > 5000
    same(want, got)


def test_only_contiguous_float32_cpu_chunks_are_taken():
    x = torch.zeros(10)
    assert SCAN.supports(x, x)
    assert not SCAN.supports(x.double(), x.double())
    assert not SCAN.supports(torch.zeros(10, 2)[:, 0], x)
    assert not SCAN.supports(x, torch.zeros(11))


@pytest.mark.parametrize("n", [5, 8, 13, 1000, 100_003])
def test_equal_places_and_counts_match_torch(scan, n):
    x, base = inputs(n, n + 1)
    bits = magnitude_bits((x - base).abs())
    values, counts = bits.unique(return_counts=True)
    for value in [int(values[counts.argmax()]), int(values[-1]), 12345]:  # heavy, last, absent
        where = (bits == value).nonzero().squeeze(1).tolist()
        ks = sorted({0, 1, len(where) // 3, len(where) // 3, max(0, len(where) - 1),
                     len(where), len(where) + 5})
        want = [where[k] if k < len(where) else n for k in ks]
        assert scan.equal_places(x, base, value, ks) == want
        assert scan.count_equal(x, base, [value, 0]) == [len(where), int((bits == 0).sum())]

"""The replay of torch's CPU sort picks what ``torch.argsort`` picks, in C and in torch."""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods.introsort import (
    TieReplay,
    _native,
    before_cuts,
    one_run,
    settled,
    sort_keys,
)


def tied(n: int, kind: str, seed: int) -> torch.Tensor:
    """Magnitudes full of equal values: bfloat16 differences, a few integers, a staircase."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "bf16":
        a, b = (torch.randn(n, generator=gen).mul(0.01).bfloat16().float() for _ in range(2))
        return (a - b).abs()
    if kind == "few":
        return torch.randint(0, 3, (n,), generator=gen).float()
    if kind == "nan":
        w = torch.randint(0, 9, (n,), generator=gen).float()
        w[torch.randint(0, n, (n // 7 + 1,), generator=gen)] = float("nan")
        return w
    return torch.arange(n).div(5, rounding_mode="floor").float()


def argsort_picks(w: torch.Tensor, cuts: list[int], descending: bool) -> list[torch.Tensor]:
    order = torch.argsort(w, descending=descending)  # unstable: what mergekit calls
    out = []
    for k in cuts:
        mask = torch.zeros(w.numel(), dtype=torch.bool)
        mask[order[:k]] = True
        out.append(mask)
    return out


@pytest.fixture(params=["c", "torch"])
def replay(request, monkeypatch):
    if request.param == "c" and _native() is None:
        pytest.skip("no C compiler here")
    if request.param == "torch":
        monkeypatch.setenv("MERGEKIT_LIKE_NATIVE", "0")
    return request.param


@pytest.mark.parametrize("n", [15, 17, 400, 70_000])  # insertion sort only; > 2^16
@pytest.mark.parametrize("kind", ["bf16", "few", "nan", "stairs"])
def test_the_replay_keeps_what_torch_argsort_keeps(replay, n, kind):
    w = tied(n, kind, seed=n)
    cuts = [1, n // 3, n // 2, n - 2]
    for descending in (True, False):
        got = before_cuts(sort_keys(w, descending), cuts)
        for k, mask, want in zip(cuts, got, argsort_picks(w, cuts, descending), strict=True):
            assert torch.equal(mask, want), (k, descending)


def test_the_c_and_torch_replays_agree_past_the_depth_limit(monkeypatch):
    """A shallow depth makes both take libstdc++'s heap sort."""
    if _native() is None:
        pytest.skip("no C compiler here")
    keys = sort_keys(tied(3000, "few", seed=1), descending=True)
    cuts = [700, 1500]
    c = before_cuts(keys, cuts, depth=2)
    monkeypatch.setenv("MERGEKIT_LIKE_NATIVE", "0")
    py = before_cuts(keys, cuts, depth=2)
    assert all(torch.equal(a, b) for a, b in zip(c, py, strict=True))
    assert [int(m.sum()) for m in c] == cuts


def test_a_tie_replay_picks_the_window_among_equal_entries_chunk_by_chunk():
    w = tied(5000, "few", seed=2)
    bits = w.view(torch.int32)
    n, k = w.numel(), 2100
    replay = TieReplay(n, n - k, n, descending=True)
    for part in bits.split(777):
        replay.add(part)
    want = argsort_picks(w, [k], True)[0]
    value = int(bits[want].min())  # the magnitude at the cut
    picks = replay.picks([value])[value]
    assert torch.equal(picks, want[bits == value])


def test_one_run():
    assert one_run(torch.tensor([False, True, True, False])) == (1, 3)
    assert one_run(torch.tensor([True, False, True])) == (-1, -1)
    assert one_run(torch.tensor([False, False])) == (0, 0)


@pytest.mark.parametrize("kind", ["bf16", "few", "nan", "stairs"])
def test_the_c_replay_by_blocks_makes_the_same_swaps(kind):
    """Scanning a partition by blocks leaves keys and positions exactly where the scans one
    entry at a time leave them (every partition, not only the cut entries)."""
    if _native() is None:
        pytest.skip("no C compiler here")
    for n, cuts in ((70_001, [5, 35_000, 69_990]), (5_000, [2_500]), (300, [1, 299])):
        keys = sort_keys(tied(n, kind, seed=n + 3), descending=True)
        blocked = settled(keys, cuts, blocks=True)
        scalar = settled(keys, cuts, blocks=False)
        assert torch.equal(blocked[0], scalar[0]) and torch.equal(blocked[1], scalar[1])

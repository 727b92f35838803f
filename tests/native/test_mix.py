"""The C merge pass gives the eager torch bytes, for every rule, consensus and weighting."""

from __future__ import annotations

import itertools

import pytest
import torch

from mergekit_like.methods.draws import Draws
from mergekit_like.methods.kernels import Kernels
from mergekit_like.methods.passes import Rule
from mergekit_like.methods.radix import magnitude_bits
from mergekit_like.native.mix import MixPass

MIX = MixPass.open()
pytestmark = pytest.mark.skipif(MIX.lib is None, reason=f"no C kernel: {MIX.error}")
EAGER = Kernels("eager")


def chunk(n: int, seed: int, models: int = 3):
    """bfloat16-rounded fine-tunes with zero deltas, -0.0, NaN, infinities and subnormals."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=gen).bfloat16().float()
    xs = [(base + 0.02 * torch.randn(n, generator=gen)).bfloat16().float()
          for _ in range(models)]
    for k, x in enumerate(xs):
        x[k::7] = base[k::7]
        if n > 40:
            x[10 + k], x[20 + k], x[30 + k] = float("nan"), float("inf"), -0.0
            base[30 + k] = 0.0
            x[35 + k], base[35 + k] = 1e-41, -1e-41
    return xs, base


def window_rule(x: torch.Tensor, base: torch.Tensor, spans: int, post: str = "none") -> Rule:
    """A window around the middle magnitudes, spans over a boundary value's equal entries."""
    bits = torch.sort(magnitude_bits((x - base).abs())).values
    n = bits.numel()
    lo, hi = int(bits[n // 3]), int(bits[(3 * n) // 4])
    found = [(lo, n // 5, n // 2), (hi, 0, n // 3)][:spans]
    return Rule("window", lo=lo + 1, hi=hi, spans=tuple(found), post=post, factor=1.25)


def rules_for(kind: str, xs, base, start: int) -> list[Rule]:
    if kind == "window":
        return [window_rule(x, base, spans=i % 3, post=("none", "scale", "none")[i])
                for i, x in enumerate(xs)]
    if kind == "open_windows":  # one bound, or none and only spans, or nothing
        full = [window_rule(x, base, 2) for x in xs]
        return [Rule("window", lo=full[0].lo), Rule("window", hi=full[1].hi),
                Rule("window", spans=full[2].spans)][:len(xs)]
    if kind == "random":
        return [Rule("random", p=p, key=Draws(3, "w", i, 10**6).key, start=start, post=post,
                     factor=0.5)
                for i, (p, post) in enumerate(zip((0.3, 0.5, 0.9), ("divide", "none", "scale"),
                                                  strict=False))]
    return [Rule("all"), Rule("zero"), Rule("all")][:len(xs)]


def eager(xs, base, rules, weights, lam, consensus, normalize):
    return EAGER.trim_mix([x.clone() for x in xs], base.clone(), rules, weights, lam,
                          consensus, normalize)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize(("consensus", "normalize"),
                         list(itertools.product([None, "sum", "count", "sum_unweighted"],
                                                [False, True])))
@pytest.mark.parametrize("kind", ["window", "open_windows", "random", "all_and_zero"])
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.7, -0.2, 1.3), (0.5, 0.0, 0.25)])
def test_the_c_merge_gives_the_eager_bytes(consensus, normalize, kind, weights):
    xs, base = chunk(5003, 1)
    rules = rules_for(kind, xs, base, start=12345)
    want = eager(xs, base, rules, weights, 0.8, consensus, normalize)
    got = MIX.trim_mix(xs, base, rules, weights, 0.8, consensus, normalize)
    assert same_bytes(got, want)


@pytest.mark.parametrize("models", [1, 2, 5])
def test_any_number_of_models_and_threads(models):
    xs, base = chunk(100_003, models, models)  # several threads of 32768 entries
    rules = [Rule("random", p=0.6, key=Draws(0, "t", i, 10**6).key, start=7)
             for i in range(models)]
    weights = [1.0 - 0.3 * i for i in range(models)]
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        got = MIX.trim_mix(xs, base, rules, weights, 1.0, "sum", True)
    finally:
        torch.set_num_threads(threads)
    assert same_bytes(got, eager(xs, base, rules, weights, 1.0, "sum", True))


def test_weights_summing_to_zero_are_not_divided_by():
    xs, base = chunk(1000, 2, 2)
    rules = [Rule("all"), Rule("all")]
    want = eager(xs, base, rules, (1.0, -1.0), 1.0, None, True)
    assert same_bytes(MIX.trim_mix(xs, base, rules, (1.0, -1.0), 1.0, None, True), want)


def test_what_it_does_not_take():
    xs, base = chunk(100, 3)
    assert MIX.supports(xs, base, [Rule("all")] * 3)
    assert not MIX.supports([x.double() for x in xs], base.double(), [Rule("all")] * 3)
    assert not MIX.supports([x[::2] for x in xs], base[::2], [Rule("all")] * 3)
    three = Rule("window", lo=1, spans=((1, 0, 1),) * 3)
    assert not MIX.supports(xs, base, [three] * 3)
    assert not MIX.supports(xs * 6, base, [Rule("all")] * 18)


@pytest.mark.parametrize("chunk_size", [20_000, 1700, 4096, 5000])
@pytest.mark.parametrize("kind", ["window", "random"])
def test_the_l1_norms_sum_as_block_sums_of_the_eager_magnitudes(chunk_size, kind):
    from mergekit_like.methods.reductions import BlockSums

    gen = torch.Generator().manual_seed(4)  # full float32 mantissas: sums that round
    x, base = torch.randn(20_000, generator=gen), torch.randn(20_000, generator=gen)
    want, got = (BlockSums(20_000), BlockSums(20_000)), (BlockSums(20_000), BlockSums(20_000))
    for start in range(0, 20_000, chunk_size):
        cx, cb = x[start:start + chunk_size], base[start:start + chunk_size]
        rule = rules_for(kind, [cx], cb, start=start)[0]
        mags, kept = EAGER.trim_magnitudes(cx.clone(), cb.clone(), rule)
        want[0].add(mags)
        want[1].add(kept)
        MIX.trim_norms(cx, cb, rule, got)
    for w, g in zip(want, got, strict=True):
        assert same_bytes(g.total(), w.total())


def test_block_sums_taken_whole_equal_those_of_the_entries():
    from mergekit_like.methods.reductions import BLOCK, BlockSums, stable_sum, tree_sum

    x = torch.rand(3 * BLOCK + 5, generator=torch.Generator().manual_seed(0))
    sums = BlockSums(x.numel())
    sums.add(x[:BLOCK])
    sums.add_block_sums(tree_sum(x[BLOCK:3 * BLOCK].view(2, BLOCK)))
    sums.add(x[3 * BLOCK:])
    assert same_bytes(sums.total(), stable_sum(x))
    with pytest.raises(ValueError, match="must start a block"):
        sums.add_block_sums(torch.zeros(1))

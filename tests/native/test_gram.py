"""The C Gram pass sums each block's products as BlockSums does: the same bytes."""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods.gram import Gram
from mergekit_like.methods.kernels import Kernels
from mergekit_like.methods.reductions import BLOCK, tree_sum
from mergekit_like.native.gram import GramPass
from tests.methods.test_kernels import EAGER, same_bytes

GRAM = GramPass.open()
COMPILED = Kernels("compiled")
pytestmark = pytest.mark.skipif(GRAM.lib is None or COMPILED.native() is None,
                                reason=f"no C kernel: {GRAM.error}")


def vectors(n: int, blocks: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(blocks * BLOCK, generator=gen) for _ in range(n)]
    xs[0][:4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-40])  # odd values
    if n > 1:
        xs[1][5] = -float("inf")
    return xs


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_block_sums_are_tree_sums_of_the_products(n):
    xs = vectors(n, 9, n)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # nine blocks on three threads
    try:
        got = GRAM.block_sums(xs)
    finally:
        torch.set_num_threads(threads)
    pairs = [(i, j) for i in range(n) for j in range(i, n)]
    assert got.shape == (len(pairs), 9)
    for k, (i, j) in enumerate(pairs):
        assert same_bits(got[k], tree_sum((xs[i] * xs[j]).view(-1, BLOCK)))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same bytes, but that a NaN may carry either sign: adding two NaNs gives one of
    them, which one up to the compiler's order of the operands (torch's as much as C's)."""
    nan = a.isnan()
    return bool(torch.equal(nan, b.isnan()) and same_bytes(a[~nan], b[~nan]))


def test_only_whole_blocks_of_flat_float32_cpu_vectors_are_taken():
    x = torch.zeros(BLOCK)
    assert GRAM.supports([x, x])
    assert not GRAM.supports([x.double()])
    assert not GRAM.supports([x.view(2, -1)])
    assert not GRAM.supports([torch.zeros(2 * BLOCK)[::2]])
    assert not GRAM.supports([x, torch.zeros(BLOCK + 1)])
    assert not GRAM.supports([x] * 17)
    with pytest.raises(ValueError, match="whole blocks"):
        GRAM.block_sums([torch.zeros(BLOCK + 1)])


@pytest.mark.parametrize("sizes", [[3 * BLOCK + 100, 2 * BLOCK - 100, 5], [BLOCK // 2] * 7])
def test_a_gram_in_chunks_has_the_eager_bytes(sizes):
    xs = [torch.cat(parts) for parts in zip(*(vectors(3, 4, 7 + k) for k in range(2)),
                                            strict=True)]
    xs = [x[:sum(sizes)] for x in xs]
    want, got = Gram(3, sum(sizes), EAGER), Gram(3, sum(sizes), COMPILED)
    at = 0
    for size in sizes:  # chunks ending inside blocks: their ends go through BlockSums.add
        want.add([x[at:at + size] for x in xs])
        got.add([x[at:at + size] for x in xs])
        at += size
    assert same_bits(torch.tensor(got.matrix()), torch.tensor(want.matrix()))
    assert torch.tensor(want.matrix()).isnan().any()  # the odd values reached the sums

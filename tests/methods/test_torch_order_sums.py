"""ties ``rescale: true``, sce and model_stock reduce whole tensors with torch's own sums, as
mergekit 0.1.5 does, so float32 results equal mergekit's bytes (formulas written out with
mergekit's torch calls below), whole and in row chunks.

The tensors hold over 32768 entries and the merges run on 2 threads: there torch's sum
splits the entries among the threads, an order no fixed-order sum reproduces.
"""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods.kernels import Kernels
from mergekit_like.methods.reductions import TorchSum
from mergekit_like.methods.sparsify import Trim, TrimState, sparsify
from tests.methods.test_kernels import merge as chunked_merge
from tests.methods.test_model_stock import _mergekit_model_stock
from tests.methods.test_sce import _mergekit_sce
from tests.methods.test_task_arithmetic import merge

SHAPE = (240, 160)  # 38,400 entries
SEEDS = range(4)
EAGER = Kernels("eager")


@pytest.fixture(autouse=True)
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _models(seed: int, n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=g)
    return base, [base + 0.01 * torch.randn(SHAPE, generator=g) for _ in range(n)]


def _mergekit_magnitude_l1(delta: torch.Tensor, density: float) -> torch.Tensor:
    """mergekit's ``magnitude(..., rescale_norm=l1)``, op for op."""
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]] = 1
    masked = delta * mask.reshape_as(delta)
    before, after = delta.abs().sum(), masked.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


def _mergekit_ties(base: torch.Tensor, xs: list[torch.Tensor], density: float) -> torch.Tensor:
    """mergekit's ties with ``rescale: true``, weights 1, normalize, op for op."""
    deltas = torch.stack([_mergekit_magnitude_l1(x - base, density) for x in xs])
    weights = torch.ones(len(xs)).view(-1, 1, 1)
    deltas.mul_(weights)
    majority = (deltas.sum(dim=0) >= 0).to(base.dtype) * 2 - 1
    mask = (deltas.sign() == majority).to(base.dtype)
    mixed, divisor = (deltas * mask).sum(dim=0), (weights * mask).sum(dim=0)
    divisor[divisor == 0] = 1
    return base + mixed / divisor


def test_torch_sum_equals_torch_sum_of_the_whole():
    x = torch.randn(100_003)
    for cut in (1, 4096, 50_000):
        sums = TorchSum(x.numel())
        sums.add(x[:cut])
        sums.add(x[cut:])
        assert torch.equal(sums.total(), x.sum())


@pytest.mark.parametrize("seed", SEEDS)
def test_magnitude_l1_rescale_is_mergekits(seed):
    base, (x,) = _models(seed, 1)
    delta = x - base
    out = sparsify(delta, Trim("magnitude", density=0.4, rescale="l1"))
    assert torch.equal(out, _mergekit_magnitude_l1(delta, 0.4))


def test_magnitude_l1_rescale_in_row_chunks_equals_whole():
    base, (x,) = _models(7, 1)
    delta = x - base
    trim = Trim("magnitude", density=0.4, rescale="l1")
    state = TrimState(trim, delta.numel(), 32)
    chunks = delta.split(50)
    for round_ in range(state.rounds):
        if state.wants(round_):
            start = 0
            for c in chunks:
                state.observe(round_, c, start)
                start += c.numel()
            state.finish(round_)
    out, start = [], 0
    for c in chunks:
        out.append(state.apply(c, start))
        start += c.numel()
    assert torch.equal(torch.cat(out), _mergekit_magnitude_l1(delta, 0.4))


@pytest.mark.parametrize("seed", SEEDS)
def test_ties_rescale_is_mergekits(seed):
    base, xs = _models(seed, 2)
    out = merge(
        "ties",
        [x.clone() for x in xs],
        base,
        [{"density": 0.4, "weight": 1.0}] * 2,
        {"rescale": True},
    )
    assert torch.equal(out, _mergekit_ties(base, xs, 0.4))


@pytest.mark.parametrize("select_topk", [1.0, 0.6])
@pytest.mark.parametrize("seed", SEEDS)
def test_sce_is_mergekits(seed, select_topk):
    base, xs = _models(seed, 3)
    out = merge("sce", [x.clone() for x in xs], base, [{}] * 3, {"select_topk": select_topk})
    assert torch.equal(out, _mergekit_sce(base, xs, select_topk))


@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_model_stock_is_mergekits(seed, filter_wise):
    base, xs = _models(seed, 3)
    out = merge(
        "model_stock", [x.clone() for x in xs], base, [{}] * 3, {"filter_wise": filter_wise}
    )
    assert torch.equal(out, _mergekit_model_stock(base, xs, filter_wise))


CHUNKED = [
    (
        "ties",
        [{"density": 0.4, "weight": 1.0}] * 2,
        {"rescale": True},
        2,
        lambda base, xs: _mergekit_ties(base, xs, 0.4),
    ),
    ("sce", [{}] * 3, {"select_topk": 0.6}, 3, lambda base, xs: _mergekit_sce(base, xs, 0.6)),
    ("sce", [{}] * 3, {}, 3, lambda base, xs: _mergekit_sce(base, xs, 1.0)),
    ("model_stock", [{}] * 3, {}, 3, lambda base, xs: _mergekit_model_stock(base, xs, False)),
    (
        "model_stock",
        [{}] * 3,
        {"filter_wise": True},
        3,
        lambda base, xs: _mergekit_model_stock(base, xs, True),
    ),
]


@pytest.mark.parametrize(("method", "model_params", "params", "n", "want"), CHUNKED)
def test_row_chunks_give_mergekits_bytes(method, model_params, params, n, want):
    base, xs = _models(11, n)
    out = chunked_merge(method, EAGER, xs, base, model_params, params, chunk_rows=37)
    assert torch.equal(out, want(base, xs))


def _bf16_models(seed: int, n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """bfloat16 models whose task vectors are small multiples of 1/64: their variances
    take few values, so the select_topk cut falls among many equal variances."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=g).to(torch.bfloat16)
    steps = [torch.randint(-3, 4, SHAPE, generator=g).to(torch.bfloat16) / 64 for _ in range(n)]
    return base, [base + s for s in steps]


@pytest.mark.parametrize("chunk_rows", [None, 37])
@pytest.mark.parametrize("select_topk", [0.6, 0.3, 0.01])  # 0.01: topk's partial_sort path
def test_sce_bf16_keeps_the_equal_variances_torch_topk_keeps(select_topk, chunk_rows):
    base, xs = _bf16_models(5, 3)
    params = {"select_topk": select_topk}
    var = torch.var(torch.stack([x - base for x in xs]), dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * select_topk)
    cut = torch.topk(var.abs().view(-1), k).values[-1]
    assert int((var.abs() > cut).sum()) < k < int((var.abs() >= cut).sum())  # ties at the cut
    if chunk_rows is None:
        out = merge("sce", [x.clone() for x in xs], base, [{}] * 3, params)
    else:
        out = chunked_merge("sce", EAGER, xs, base, [{}] * 3, params, chunk_rows=chunk_rows)
    assert torch.equal(out, _mergekit_sce(base, xs, select_topk))

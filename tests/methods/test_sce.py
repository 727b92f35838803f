"""SCE worked by hand: select by variance, weight by energy, erase minority signs."""

from __future__ import annotations

import pytest
import torch

from mergekit_like.methods.sce import variance
from tests.methods.test_task_arithmetic import merge

BASE = torch.tensor([1.0, 2.0, 3.0, 4.0])
D1 = torch.tensor([1.0, -2.0, 0.0, 2.0])
D2 = torch.tensor([3.0, 2.0, 0.0, -1.0])


def test_sce_without_selection():
    out = merge("sce", [BASE + D1, BASE + D2], BASE, [{}, {}])
    w1, w2 = (1 + 4 + 0 + 4) / 4, (9 + 4 + 0 + 1) / 4
    w1, w2 = w1 / (w1 + w2), w2 / (w1 + w2)  # 9/23, 14/23
    # raw sums [4, 0, 0, 1] -> all +; agreeing: pos0 both, pos1 d2, pos2 none, pos3 d1
    expected = torch.tensor([(w1 * 1 + w2 * 3) / (w1 + w2), 2.0, 0.0, 2.0])
    torch.testing.assert_close(out, BASE + expected)


def test_sce_select_topk_keeps_highest_variance_positions():
    out = merge("sce", [BASE + D1, BASE + D2], BASE, [{}, {}], {"select_topk": 0.5})
    # variances [1, 4, 0, 2.25]: 3 non-zero, int(1.5) = 1 kept (pos1): d1 -2, d2 +2,
    # equal energies, sum 0 elects +: only d2 agrees -> 2
    torch.testing.assert_close(out, BASE + torch.tensor([0.0, 2.0, 0.0, 0.0]))


def _dyadic(shape: tuple[int, ...], scale: int, seed: int) -> torch.Tensor:
    """Multiples of 1/8: squares and sums exact in any order (torch.sum's or ours)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-scale, scale + 1, shape, generator=g).float() / 8


def _mergekit_sce(base: torch.Tensor, xs: list[torch.Tensor], select_topk: float) -> torch.Tensor:
    """mergekit 0.1.5's sce, op for op."""
    tvs = torch.stack([x - base for x in xs])
    if select_topk < 1:
        var = torch.var(tvs, dim=0, unbiased=False)
        k = int(torch.count_nonzero(var) * select_topk)
        mask = torch.zeros_like(var)
        mask.view(-1)[torch.topk(var.abs().view(-1), k=k, largest=True).indices] = 1
        tvs = tvs * mask.unsqueeze(0)
    majority = (tvs.sum(dim=0) >= 0).to(base.dtype) * 2 - 1
    erase = tvs.sign() == majority
    weights = tvs.square().reshape(tvs.shape[0], -1).mean(dim=1)
    weights = weights / torch.sum(weights).item()
    erased = weights.view(-1, *[1] * base.dim()) * erase
    merged = (tvs * erased).sum(dim=0)
    return base + merged / torch.sum(erased, dim=0).clamp(min=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sce_weights_and_mix_round_as_mergekit(dtype):
    for seed in range(0, 120, 4):  # tensors whose weights round differently ways apart
        base = (_dyadic((40, 24), 64, seed) / 4).to(dtype)
        xs = [base + _dyadic((40, 24), 1 + i, seed + 1 + i).to(dtype) for i in range(3)]
        out = merge("sce", [x.clone() for x in xs], base, [{}, {}, {}])
        assert out.dtype == dtype
        assert torch.equal(out, _mergekit_sce(base, xs, 1.0)), seed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_variance_is_torch_var_bytes(dtype, n):
    g = torch.Generator().manual_seed(n)
    deltas = [(torch.randn(5000, generator=g) * 0.01).to(dtype) for _ in range(n)]
    want = torch.var(torch.stack(deltas), dim=0, unbiased=False)
    assert torch.equal(variance(deltas), want)


def test_sce_selection_by_torch_var():
    g = torch.Generator().manual_seed(7)
    base = torch.randn(64, 16, generator=g)
    xs = [base + torch.randn(64, 16, generator=g) * 0.01 for _ in range(3)]
    out = merge("sce", [x.clone() for x in xs], base, [{}, {}, {}], {"select_topk": 0.4})
    want = _mergekit_sce(base, xs, 0.4)
    # the energies' sums may differ in their last bit (fixed order, not torch.sum's)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)

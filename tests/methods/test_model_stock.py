"""Model Stock: interpolation ratio from the angle between the fine-tunes."""

from __future__ import annotations

import math

import pytest
import torch

from tests.methods.test_task_arithmetic import merge

BASE = torch.tensor([[0.5, -0.5], [1.0, 2.0]])


def test_model_stock_whole_tensor_angle():
    d1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    d2 = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    out = merge("model_stock", [BASE + d1, BASE + d2], BASE, [{}, {}])
    cos = 1 / math.sqrt(2)
    t = 2 * cos / (1 + cos)
    torch.testing.assert_close(out, t * (BASE + (d1 + d2) / 2) + (1 - t) * BASE)


def test_model_stock_filter_wise_one_ratio_per_row():
    d1 = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    d2 = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    out = merge("model_stock", [BASE + d1, BASE + d2], BASE, [{}, {}], {"filter_wise": True})
    # row 0: orthogonal, cos 0 -> t 0 (stays at base); row 1: parallel, cos 1 -> t 1 (average)
    torch.testing.assert_close(out, torch.stack([BASE[0], BASE[1] + torch.tensor([1.5, 1.5])]))


def test_model_stock_three_models_mean_pairwise_cosine():
    ds = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0]),
          torch.tensor([3.0, 3.0, 0.0])]
    base = torch.zeros(3)
    out = merge("model_stock", [base + d for d in ds], base, [{}, {}, {}])
    cos = (0.0 + 1 / math.sqrt(2) + 1 / math.sqrt(2)) / 3
    t = 3 * cos / (1 + 2 * cos)
    torch.testing.assert_close(out, t * sum(ds) / 3)


def test_model_stock_unchanged_tensor_stays_at_base():
    out = merge("model_stock", [BASE.clone(), BASE.clone()], BASE, [{}, {}])
    torch.testing.assert_close(out, BASE)


def test_model_stock_opposite_fine_tunes_keep_the_base():
    # mergekit 0.1.5: where 1 + (N - 1) cos is 0, t = 0 (the base), not inf/NaN or an error
    d = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = merge("model_stock", [BASE + d, BASE - d], BASE, [{}, {}])
    assert torch.equal(out, BASE)


def _dyadic(shape: tuple[int, ...], scale: int, seed: int) -> torch.Tensor:
    """Multiples of 1/8: their squares, products and sums are exact in any order, so
    mergekit's torch.norm/sum and ours agree and the test checks the arrangement."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-scale, scale + 1, shape, generator=g).float() / 8


def _mergekit_model_stock(w0: torch.Tensor, ws: list[torch.Tensor],
                          filter_wise: bool) -> torch.Tensor:
    """mergekit 0.1.5's model_stock, op for op."""
    shape = w0.shape
    if not filter_wise:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    t = (n * cos) / denominator
    average = sum(ws) / n
    return (t * average + (1 - t) * w0).reshape(shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_bytes_follow_mergekits_arrangement(dtype, filter_wise):
    base = (_dyadic((48, 96), 64, 0) / 4).to(dtype)  # 4608 entries: over one 4096-block
    xs = [base + _dyadic((48, 96), 8, i).to(dtype) for i in (1, 2, 3)]
    out = merge("model_stock", [x.clone() for x in xs], base, [{}, {}, {}],
                {"filter_wise": filter_wise})
    want = _mergekit_model_stock(base, xs, filter_wise)
    assert out.dtype == dtype
    assert torch.equal(out, want)

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


def test_model_stock_opposite_fine_tunes_raise():
    d = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match="opposite directions"):
        merge("model_stock", [BASE + d, BASE - d], BASE, [{}, {}])

"""TIES on a fixed example worked out by hand."""

from __future__ import annotations

import torch

from tests.methods.test_task_arithmetic import merge

BASE = torch.ones(4)
D1 = torch.tensor([3.0, -1.0, 0.5, -2.0])   # density 0.5 keeps 3, -2
D2 = torch.tensor([-1.0, 2.0, 1.5, 0.5])    # density 0.5 keeps 2, 1.5
D3 = torch.tensor([-4.0, 0.1, -0.2, 3.0])   # density 1 keeps all
MODELS = [{"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.5}, {"weight": 1.0}]


def test_ties_trim_elect_disjoint_mean():
    out = merge("ties", [BASE + D1, BASE + D2, BASE + D3], BASE, MODELS)
    # weighted trimmed: d1 [3,0,0,-2], d2 [0,1,0.75,0], d3 [-4,.1,-.2,3]
    # sums [-1, 1.1, .55, 1] -> elected [-,+,+,+]
    # agreeing: pos0 d3 | pos1 d2,d3 | pos2 d2 | pos3 d3
    mixed = torch.tensor([-4.0, 1.0 + 0.1, 0.75, 3.0])
    divisor = torch.tensor([1.0, 0.5 + 1.0, 0.5, 1.0])
    torch.testing.assert_close(out, BASE + mixed / divisor)


def test_ties_without_normalize_and_with_lambda():
    out = merge("ties", [BASE + D1, BASE + D2, BASE + D3], BASE, MODELS,
                {"normalize": False, "lambda": 0.5})
    torch.testing.assert_close(out, BASE + 0.5 * torch.tensor([-4.0, 1.1, 0.75, 3.0]))


def test_ties_rescale_keeps_each_trimmed_l1_norm():
    out = merge("ties", [BASE + D1], BASE, [{"density": 0.5}], {"rescale": True})
    # kept [3, 0, 0, -2]: L1 5 of 6.5
    torch.testing.assert_close(out, BASE + torch.tensor([3.0, 0, 0, -2]) * 6.5 / 5)

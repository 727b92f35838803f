"""Model Breadcrumbs on a fixed example: outliers and small entries dropped."""

from __future__ import annotations

import torch

from tests.methods.test_task_arithmetic import merge

BASE = torch.full((10,), 0.5)
# magnitudes 1..10; density 0.5 keeps 5, gamma 0.2 drops the 2 largest: |d| in 4..8 kept
D1 = torch.tensor([1.0, -10.0, 4.0, -5.0, 9.0, 2.0, -3.0, 6.0, -7.0, 8.0])
K1 = torch.tensor([0.0, 0.0, 4.0, -5.0, 0.0, 0.0, 0.0, 6.0, -7.0, 8.0])
D2 = torch.tensor([-2.0, 1.0, 3.0, 4.0, -5.0, 6.0, -7.0, 8.0, 9.0, 10.0])
K2 = torch.tensor([0.0, 0.0, 0.0, 4.0, -5.0, 6.0, -7.0, 8.0, 0.0, 0.0])
MODELS = [{"weight": 1.0, "density": 0.5, "gamma": 0.2},
          {"weight": 2.0, "density": 0.5, "gamma": 0.2}]


def test_breadcrumbs_adds_the_trimmed_task_vectors():
    out = merge("breadcrumbs", [BASE + D1, BASE + D2], BASE, MODELS, {"lambda": 0.5})
    torch.testing.assert_close(out, BASE + 0.5 * (K1 + 2.0 * K2))


def test_breadcrumbs_ties_elects_signs():
    out = merge("breadcrumbs_ties", [BASE + D1, BASE + D2], BASE, MODELS)
    t1, t2 = K1, 2.0 * K2
    # sums [0,0,4,3,-10,12,-14,22,-7,8] -> signs + + + + - + - + - +; zeros never agree
    agree1 = torch.tensor([0, 0, 1, 0, 0, 0, 0, 1, 1, 1.0])
    agree2 = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 0, 0.0])
    torch.testing.assert_close(out, BASE + t1 * agree1 + t2 * agree2)
    normalized = merge("breadcrumbs_ties", [BASE + D1, BASE + D2], BASE, MODELS,
                       {"normalize": True})
    divisor = (1.0 * agree1 + 2.0 * agree2).clamp(min=1.0)  # zero divisors become 1
    torch.testing.assert_close(normalized, BASE + (t1 * agree1 + t2 * agree2) / divisor)


def test_breadcrumbs_default_gamma():
    d = torch.arange(1.0, 201.0)  # int(0.01 * 200) = 2 largest dropped, keep 100
    out = merge("breadcrumbs", [d], torch.zeros(200), [{"density": 0.5}])
    expected = torch.where((d >= 99) & (d <= 198), d, torch.zeros(()))
    torch.testing.assert_close(out, expected)

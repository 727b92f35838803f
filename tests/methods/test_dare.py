"""DARE: masks reproduced from the documented seeded draws, formulas written out."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from mergekit_like.methods import REGISTRY
from tests.methods.draws import documented_draws
from tests.methods.test_task_arithmetic import merge

GEN = torch.Generator().manual_seed(11)
BASE = torch.randn(6, 8, generator=GEN)
D1 = torch.randn(6, 8, generator=GEN)
D2 = torch.randn(6, 8, generator=GEN)


def _masks(name: str, seed: int, densities: list[float]) -> list[torch.Tensor]:
    """Each model's float32 uniform draws (seeded by run seed, tensor, model) below density."""
    return [documented_draws(seed, name, j, BASE.shape) < d for j, d in enumerate(densities)]


def _l1(delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return delta * mask * (delta.abs().sum() / (delta * mask).abs().sum())


def test_dare_linear_default_rescale_keeps_l1_norm():
    out = merge("dare_linear", [BASE + D1, BASE + D2], BASE,
                [{"weight": 0.7, "density": 0.5}, {"weight": 0.3, "density": 0.25}],
                {"lambda": 1.5}, name="w", seed=3)
    m1, m2 = _masks("w", 3, [0.5, 0.25])
    expected = BASE + 1.5 * (0.7 * _l1(D1, m1) + 0.3 * _l1(D2, m2))
    torch.testing.assert_close(out, expected)


def test_dare_linear_paper_rescale_divides_by_density():
    out = merge("dare_linear", [BASE + D1, BASE + D2], BASE,
                [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.25}],
                {"rescale_by_probability": True}, name="w", seed=3)
    m1, m2 = _masks("w", 3, [0.5, 0.25])
    torch.testing.assert_close(out, BASE + D1 * m1 / 0.5 + D2 * m2 / 0.25)


def test_dare_linear_without_rescale_only_drops():
    out = merge("dare_linear", [BASE + D1], BASE, [{"density": 0.4}], {"rescale": False},
                name="v", seed=1)
    (m1,) = _masks("v", 1, [0.4])
    torch.testing.assert_close(out, BASE + D1 * m1)


def test_dare_ties_elects_signs_after_the_drop():
    out = merge("dare_ties", [BASE + D1, BASE + D2], BASE,
                [{"weight": 1.0, "density": 0.6}, {"weight": 0.5, "density": 0.6}],
                {"normalize": True}, name="w", seed=9)
    m1, m2 = _masks("w", 9, [0.6, 0.6])
    t1, t2 = 1.0 * _l1(D1, m1), 0.5 * _l1(D2, m2)
    sign = torch.where(t1 + t2 >= 0, 1.0, -1.0)
    k1, k2 = (t1.sign() == sign).float(), (t2.sign() == sign).float()
    divisor = 1.0 * k1 + 0.5 * k2
    divisor[divisor == 0] = 1.0
    torch.testing.assert_close(out, BASE + (t1 * k1 + t2 * k2) / divisor)


def test_density_one_keeps_everything_and_defaults_match_mergekit():
    out = merge("dare_ties", [BASE + D1], BASE, [{}])
    torch.testing.assert_close(out, BASE + D1)
    params = REGISTRY["dare_ties"].params()
    assert (params.normalize, params.rescale, params.int8_mask) == (False, True, False)


def test_paper_rescale_needs_rescale():
    with pytest.raises(ValidationError, match="rescale_by_probability needs rescale: true"):
        REGISTRY["dare_linear"].params.model_validate(
            {"rescale": False, "rescale_by_probability": True})

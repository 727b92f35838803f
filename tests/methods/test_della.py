"""DELLA: rank-based keep probabilities written out, masks from the seeded generator."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from mergekit_like.methods import REGISTRY
from tests.methods.draws import documented_draws
from tests.methods.test_task_arithmetic import merge

BASE = torch.full((2, 4), -0.25)
D1 = torch.tensor([[0.4, -0.1, 0.3, -0.2], [1.0, 2.0, -4.0, 3.0]])
D2 = torch.tensor([[-0.5, 0.6, 0.7, -0.8], [0.3, -0.1, 0.2, -0.4]])
# density 0.5, epsilon 0.3: p = 0.2 + 0.6 * rank / 3 with rank the magnitude rank in the row
P1 = torch.tensor([[0.8, 0.2, 0.6, 0.4], [0.2, 0.4, 0.8, 0.6]])
P2 = torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.6, 0.2, 0.4, 0.8]])
MODELS = [{"weight": 1.0, "density": 0.5, "epsilon": 0.3},
          {"weight": 0.5, "density": 0.5, "epsilon": 0.3}]


def _masks(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (documented_draws(seed, name, 0, BASE.shape) < P1,
            documented_draws(seed, name, 1, BASE.shape) < P2)


def test_della_linear_paper_rescale():
    out = merge("della_linear", [BASE + D1, BASE + D2], BASE, MODELS,
                {"rescale_by_probability": True, "lambda": 0.9}, name="q", seed=4)
    m1, m2 = _masks("q", 4)
    torch.testing.assert_close(out, BASE + 0.9 * (D1 * m1 / P1 + 0.5 * D2 * m2 / P2))


def test_della_elects_signs_normalizes_and_keeps_l1_by_default():
    out = merge("della", [BASE + D1, BASE + D2], BASE, MODELS, name="q", seed=5)
    m1, m2 = _masks("q", 5)
    t1 = D1 * m1 * (D1.abs().sum() / (D1 * m1).abs().sum())
    t2 = 0.5 * D2 * m2 * (D2.abs().sum() / (D2 * m2).abs().sum())
    sign = torch.where(t1 + t2 >= 0, 1.0, -1.0)
    k1, k2 = (t1.sign() == sign).float(), (t2.sign() == sign).float()
    divisor = k1 + 0.5 * k2
    divisor[divisor == 0] = 1.0
    torch.testing.assert_close(out, BASE + (t1 * k1 + t2 * k2) / divisor)


def test_della_defaults_match_mergekit():
    m, lin = REGISTRY["della"], REGISTRY["della_linear"]
    assert (m.params().normalize, m.params().rescale) == (True, True)
    assert (lin.params().normalize, lin.params().rescale) == (False, True)
    assert m.model_params().epsilon == 0.15 and m.params().lambda_ == 1.0


def test_epsilon_must_keep_probabilities_inside_unit_interval():
    with pytest.raises(ValidationError, match="density - epsilon and density"):
        REGISTRY["della"].model_params.model_validate({"density": 0.1})  # 0.1 - 0.15 < 0
    REGISTRY["della"].model_params.model_validate({"density": 1.0})  # not trimmed: fine

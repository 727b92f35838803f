"""Deterministic custom scorers for the soup tests (named by recipes as tests.soups.scorers:fn).

Each reads ``x = classifier.bias[0]`` of the model, which for a soup is the weighted mean of
the ingredients' values, so every score is a known function of the mixing weights.
"""

from __future__ import annotations

from typing import Any

VAL_TARGET = 0.6875
TEST_TARGET = 0.5


def bias0(model: Any) -> Any:
    """The scored weight."""
    return model.classifier.bias[0]


def distance(model: Any, device: str, split: str = "val") -> float:
    """Higher is better: -|x - target|, rounded to 6 decimals (float32 sums are not exact)."""
    target = VAL_TARGET if split == "val" else TEST_TARGET
    return -round(abs(float(bias0(model)) - target), 6)


def squared_error(model: Any, device: str, split: str = "val") -> Any:
    """Lower is better: (x - target)^2 as a tensor, differentiable for learned_soup."""
    target = VAL_TARGET if split == "val" else TEST_TARGET
    return (bias0(model) - target) ** 2

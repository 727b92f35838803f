"""Deterministic custom scorers for the evolve tests (tests.evolve.scorers:fn).

``x = classifier.bias[0]`` of a linear merge with normalize is the weighted mean of the
ingredients' values, and ``y = vit.layers[0].attention.q_proj.bias[0]`` the same for layer 0, so
each score is a known function of the searched weights.
"""

from __future__ import annotations

from typing import Any

TARGET = 0.6875
LAYER0_TARGET = 0.3


def values(model: Any) -> tuple[float, float]:
    """The two scored weights: the classifier's bias[0] and layer 0's query bias[0]."""
    layer0 = model.vit.layers[0].attention.q_proj.bias[0]
    return float(model.classifier.bias[0]), float(layer0)


def closeness(model: Any, device: str, split: str = "val") -> float:
    """Higher is better: minus the squared distance of both weights from their targets."""
    x, y = values(model)
    shift = 0.0 if split == "val" else 0.1
    return -((x - TARGET - shift) ** 2) - (y - LAYER0_TARGET) ** 2

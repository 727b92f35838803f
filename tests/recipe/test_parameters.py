"""Parameter resolution: gradients over layers, filter lists, lookup order."""

from __future__ import annotations

import pytest

from mergekit_like.recipe.models import FilterEntry
from mergekit_like.recipe.parameters import ParamLevel, evaluate, interpolate, lookup


@pytest.mark.parametrize(("t", "expected"), [(0.0, 0.0), (0.25, 0.5), (0.5, 1.0), (0.75, 0.75),
                                             (1.0, 0.5)])
def test_gradient_interpolates_linearly(t, expected):
    # three anchors at t = 0, 0.5, 1
    assert interpolate((0.0, 1.0, 0.5), t) == pytest.approx(expected)


def test_scalars_and_single_point_gradients():
    assert interpolate(0.3, 0.7) == 0.3
    assert interpolate((0.3,), 0.7) == 0.3
    assert interpolate(True, 0.2) is True


def test_filter_first_match_wins_and_default():
    value = (FilterEntry(filter="self_attn", value=0.1),
             FilterEntry(filter="mlp", value=(0.0, 1.0)),
             FilterEntry(value=0.9))
    assert evaluate(value, "model.layers.0.self_attn.q_proj.weight", 0.5) == 0.1
    assert evaluate(value, "model.layers.0.mlp.up_proj.weight", 0.5) == 0.5
    assert evaluate(value, "model.norm.weight", 0.0) == 0.9
    assert evaluate(value[:2], "model.norm.weight", 0.0) is None


def test_lookup_order_model_then_slice_then_recipe():
    levels = [ParamLevel({"weight": 0.2}, ("models", 1, "parameters")),
              ParamLevel({"weight": 0.5, "density": 0.7}, ("slices", 0, "parameters")),
              ParamLevel({"density": 0.1, "lambda": 2.0}, ("parameters",))]
    assert lookup("weight", levels, "x", 0) == (0.2, ("models", 1, "parameters", "weight"))
    assert lookup("density", levels, "x", 0) == (0.7, ("slices", 0, "parameters", "density"))
    assert lookup("lambda", levels, "x", 0) == (2.0, ("parameters", "lambda"))
    assert lookup("t", levels, "x", 0) is None


def test_unmatched_filter_falls_through_to_next_level():
    levels = [ParamLevel({"weight": (FilterEntry(filter="mlp", value=0.2),)}, ("models", 0)),
              ParamLevel({"weight": 0.9}, ("parameters",))]
    assert lookup("weight", levels, "model.layers.0.mlp.w", 0)[0] == 0.2
    assert lookup("weight", levels, "model.embed_tokens.weight", 0)[0] == 0.9

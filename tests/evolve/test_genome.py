"""The genotype -> recipe mapping, against mergekit-evolve's layout written out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mergekit_like.errors import MergeError
from mergekit_like.evolve.config import GenomeConfig
from mergekit_like.evolve.genome import Genome


def genome(**kw) -> Genome:
    layers = kw.pop("layers", 4)
    return Genome(GenomeConfig.model_validate({"models": ["a", "b"], **kw}), layers)


def test_initial_is_equal_weights_and_full_density():
    g = genome(merge_method="ties", base_model="base", layer_granularity=2)
    assert g.shape == (2, 2, 1, 2)
    x = g.initial().reshape(g.shape)
    assert np.array_equal(x[..., 0], np.full((2, 2, 1), 0.5))
    assert np.array_equal(x[..., 1], np.ones((2, 2, 1)))


def test_slices_per_layer_group_with_abs_weights_and_clipped_densities():
    g = genome(merge_method="ties", base_model="base", layer_granularity=2)
    # (group, model, filter set, parameter) flattened: weight then density
    x = np.array([-0.3, 1.7, 0.2, -0.4, 0.5, 0.6, 0.7, 0.8])
    data = g.recipe_data(x, dtype="float32")
    assert data["merge_method"] == "ties" and data["base_model"] == "base"
    assert data["parameters"] == {"normalize": True} and data["dtype"] == "float32"
    s0, s1 = data["slices"]
    assert s0["sources"] == [
        {"model": "a", "layer_range": [0, 2], "parameters": {"weight": 0.3, "density": 1.0}},
        {"model": "b", "layer_range": [0, 2], "parameters": {"weight": 0.2, "density": 0.4}},
        {"model": "base", "layer_range": [0, 2]}]
    assert s1["sources"][0]["parameters"] == {"weight": 0.5, "density": 0.6}
    assert s1["sources"][1] == {"model": "b", "layer_range": [2, 4],
                                "parameters": {"weight": 0.7, "density": 0.8}}


def test_negative_weights_filters_and_one_group():
    g = genome(merge_method="task_arithmetic", base_model="a", allow_negative_weights=True,
               filters=["self_attn"])
    x = np.array([-0.25, 0.75, 0.5, -1.0])  # model a: [attn, rest], model b: [attn, rest]
    data = g.recipe_data(x)
    assert "slices" not in data and data["parameters"] == {"normalize": False}
    assert data["models"] == [  # base_model a is one of the models: not added again
        {"model": "a", "parameters": {"weight": [{"filter": "self_attn", "value": -0.25},
                                                 {"value": 0.75}]}},
        {"model": "b", "parameters": {"weight": [{"filter": "self_attn", "value": 0.5},
                                                 {"value": -1.0}]}}]
    assert g.named_values(x) == {"models[0].weight[self_attn]": [-0.25],
                                 "models[0].weight": [0.75],
                                 "models[1].weight[self_attn]": [0.5],
                                 "models[1].weight": [-1.0]}


def test_smooth_gives_gradients_over_the_groups():
    g = genome(merge_method="linear", layer_granularity=1, smooth=True, normalize=False)
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])  # 4 groups x 2 models
    data = g.recipe_data(x)
    assert data["models"] == [{"model": "a", "parameters": {"weight": [0.1, 0.3, 0.5, 0.7]}},
                              {"model": "b", "parameters": {"weight": [0.2, 0.4, 0.6, 0.8]}}]
    assert data["parameters"] == {"normalize": False}


def test_granularity_must_divide_the_layers():
    with pytest.raises(MergeError, match="genome.layer_granularity: 3 does not divide the "
                       "models' 4 layers"):
        genome(merge_method="linear", layer_granularity=3)


def test_random_init_is_seeded():
    g = genome(merge_method="linear")
    assert np.array_equal(g.initial(True, 5), g.initial(True, 5))
    assert not np.array_equal(g.initial(True, 5), g.initial(True, 6))

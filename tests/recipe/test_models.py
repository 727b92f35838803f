"""Recipe validation: parameter value forms, structure rules, located errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mergekit_like.recipe.models import FilterEntry, Recipe


def _recipe(**kw):
    data = {"merge_method": "linear", "models": [{"model": "a"}, {"model": "b"}]}
    data.update(kw)
    return Recipe.model_validate(data)


def test_parameter_forms_are_normalised():
    r = _recipe(parameters={
        "weight": 1, "flag": True, "grad": [0, "0.5", 1], "tiny": "1e-5",
        "f": [{"filter": "mlp", "value": [1, 2]}, {"value": 3}],
    })
    p = r.parameters
    assert p["weight"] == 1.0 and isinstance(p["weight"], float)
    assert p["flag"] is True
    assert p["grad"] == (0.0, 0.5, 1.0)
    assert p["tiny"] == 1e-5  # YAML 1.1 reads 1e-5 as a string
    assert p["f"] == (FilterEntry(filter="mlp", value=(1.0, 2.0)), FilterEntry(value=3.0))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "expected a number, got 'abc'"),
        ([1, "x"], "expected a number, got 'x'"),
        ([], "a gradient needs at least one number"),
        ([{"filter": "mlp"}], "a filter entry has keys 'filter' (optional) and 'value'"),
        ([{"filter": 3, "value": 1}], "filter must be a string"),
        (float("nan"), "expected a finite number"),
        ({"a": 1}, "expected a number"),
    ],
)
def test_bad_parameter_values_name_the_field(value, message):
    with pytest.raises(ValidationError) as exc:
        Recipe.model_validate({"merge_method": "linear",
                               "models": [{"model": "a", "parameters": {"weight": value}}]})
    (err,) = exc.value.errors()
    assert err["loc"] == ("models", 0, "parameters", "weight")
    assert message in err["msg"]


def test_models_xor_slices():
    with pytest.raises(ValidationError, match="exactly one of 'models' or 'slices'"):
        Recipe.model_validate({"merge_method": "linear"})
    with pytest.raises(ValidationError, match="exactly one of 'models' or 'slices'"):
        Recipe.model_validate({"merge_method": "linear", "models": [{"model": "a"}],
                               "slices": [{"sources": [{"model": "a", "layer_range": [0, 1]}]}]})


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValidationError) as exc:
        _recipe(merge_method="avg")
    msg = exc.value.errors()[0]["msg"]
    assert "unknown merge method 'avg'" in msg
    for name in ("linear", "ties", "task_arithmetic", "passthrough"):
        assert name in msg


def test_extra_keys_rejected_and_frozen():
    with pytest.raises(ValidationError) as exc:
        _recipe(tokenzer_source="base")
    assert exc.value.errors()[0]["loc"] == ("tokenzer_source",)
    r = _recipe()
    with pytest.raises(ValidationError):
        r.name = "x"  # type: ignore[misc]


def test_parameters_null_is_empty():
    r = Recipe.model_validate({"merge_method": "linear", "parameters": None,
                               "models": [{"model": "a", "parameters": None}]})
    assert r.parameters == {} and r.models[0].parameters == {}


@pytest.mark.parametrize("rng", [[2, 2], [3, 1], [-1, 2]])
def test_layer_range_must_be_increasing(rng):
    with pytest.raises(ValidationError, match="layer_range"):
        Recipe.model_validate({"merge_method": "passthrough",
                               "slices": [{"sources": [{"model": "a", "layer_range": rng}]}]})


def test_slice_sources_need_equal_lengths():
    with pytest.raises(ValidationError, match="same number of layers"):
        Recipe.model_validate({"merge_method": "linear", "slices": [{"sources": [
            {"model": "a", "layer_range": [0, 2]}, {"model": "b", "layer_range": [0, 3]}]}]})


def test_tokenizer_block_and_source_are_exclusive():
    r = _recipe(tokenizer={"source": "union", "pad_to_multiple_of": 8,
                           "tokens": {"<x>": {"source": "b", "force": True},
                                      "<z>": {"source": {"kind": "zero"}}}})
    cfg = r.tokenizer_config()
    assert cfg.source == "union" and cfg.tokens["<x>"].force and cfg.pad_to_multiple_of == 8
    assert _recipe(tokenizer_source="union").tokenizer_config().source == "union"
    assert _recipe().tokenizer_config() is None
    with pytest.raises(ValidationError, match="not both"):
        _recipe(tokenizer_source="base", tokenizer={"source": "union"})
    with pytest.raises(ValidationError, match="needs a 'model'"):
        _recipe(tokenizer={"tokens": {"<x>": {"source": {"kind": "model_token"}}}})


def test_referenced_models_base_first_unique():
    r = _recipe(base_model="b")
    assert r.referenced_models() == ["b", "a"]

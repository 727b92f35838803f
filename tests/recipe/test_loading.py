"""Loading recipe files: line numbers in errors, hydra overrides, YAML edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergekit_like.errors import RecipeError
from mergekit_like.recipe.loading import apply_overrides, load_recipe, parse_yaml
from tests.conftest import write_recipe

GOOD = """\
merge_method: ties
base_model: base
models:
  - model: a
    parameters:
      weight: 0.5
      density: 0.5
  - model: b
    parameters:
      weight: 1.0
parameters:
  normalize: true
"""


def _messages(exc: pytest.ExceptionInfo[RecipeError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


def test_error_names_file_line_and_field(tmp_path):
    path = write_recipe(tmp_path, GOOD.replace("weight: 1.0", "weight: abc"))
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    assert _messages(exc) == [
        "recipe.yaml:10: models[1].parameters.weight: expected a number, got 'abc'"]


def test_every_problem_reported_once_per_line(tmp_path):
    text = GOOD.replace("weight: 1.0", "weight: abc") + "tokenzer_source: base\n"
    with pytest.raises(RecipeError) as exc:
        load_recipe(write_recipe(tmp_path, text))
    assert _messages(exc) == [
        "recipe.yaml:10: models[1].parameters.weight: expected a number, got 'abc'",
        "recipe.yaml:13: tokenzer_source: unknown key; did you mean 'tokenizer_source'?",
    ]


def test_invalid_yaml_and_duplicates(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+: invalid YAML"):
        load_recipe(write_recipe(tmp_path, "merge_method: [linear\n"))
    with pytest.raises(RecipeError, match="recipe.yaml:2: duplicate key 'merge_method'"):
        load_recipe(write_recipe(tmp_path, "merge_method: a\nmerge_method: b\n"))
    with pytest.raises(RecipeError, match="a recipe is a YAML mapping"):
        load_recipe(write_recipe(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_crlf_and_string_numbers(tmp_path):
    text = GOOD.replace("density: 0.5", "density: 5e-1").replace("\n", "\r\n")
    loaded = load_recipe(write_recipe(tmp_path, text))
    assert loaded.recipe.models[0].parameters["density"] == 0.5


def test_overrides_change_add_delete_and_index(tmp_path):
    path = write_recipe(tmp_path, GOOD)
    loaded = load_recipe(path, ["models.0.parameters.weight=0.3", "parameters.normalize=false",
                                "+parameters.lambda=0.9", "~models.1.parameters.weight",
                                "+name=my merge"])
    r = loaded.recipe
    assert r.models[0].parameters["weight"] == 0.3
    assert r.models[1].parameters == {}
    assert r.parameters == {"normalize": False, "lambda": 0.9}
    assert r.name == "my merge"
    assert ("models", 0, "parameters", "weight") in loaded.overridden


def test_override_errors_name_the_command_line(tmp_path):
    path = write_recipe(tmp_path, GOOD)
    with pytest.raises(RecipeError) as exc:
        load_recipe(path, ["models.1.parameters.weight=abc"])
    assert _messages(exc) == [
        "command line: models[1].parameters.weight: expected a number, got 'abc'"]
    with pytest.raises(RecipeError, match="sweeps need multirun"):
        load_recipe(path, ["parameters.density=0.2,0.5"])
    with pytest.raises(RecipeError, match="already set"):
        load_recipe(path, ["+merge_method=linear"])
    with pytest.raises(RecipeError, match="no such key to delete"):
        load_recipe(path, ["~nothing"])
    with pytest.raises(RecipeError, match="no such list item"):
        load_recipe(path, ["models.5.model=x"])
    with pytest.raises(RecipeError, match="bad override"):
        load_recipe(path, ["=oops"])


def test_overrides_do_not_modify_input():
    data = {"parameters": {"a": 1.0}}
    new, touched = apply_overrides(data, ["parameters.a=2"])
    assert data == {"parameters": {"a": 1.0}} and new == {"parameters": {"a": 2}}
    assert touched == frozenset({("parameters", "a")})


def test_parse_yaml_records_lines():
    data, lines = parse_yaml(GOOD, Path("r.yaml"))
    assert lines[("models", 1, "parameters", "weight")] == 10
    assert lines[("parameters",)] == 12
    assert data["models"][0]["model"] == "a"

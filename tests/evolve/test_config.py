"""merge evolve's config: mergekit-evolve fields that cannot run here are one line, exit 2."""

from __future__ import annotations

import pytest

from tests.conftest import write_recipe
from tests.evolve.conftest import evolve_config

LM_EVAL = """genome:
  models: [a, b]
  merge_method: task_arithmetic
  base_model: a
tasks:
  - name: eq_bench
    weight: 1.0
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (LM_EVAL, "recipe.yaml:6: tasks: lm-eval tasks cannot run here; score candidates "
                  "with an evaluation: block instead"),
        ("genome: {models: [a], merge_method: linear}\nevaluation: {python: m:f}\nlimit: 5\n",
         "recipe.yaml:3: limit: an lm-eval option, not supported; use "
         "evaluation.max_examples"),
        ("genome: {models: [a], merge_method: linear}\nevaluation: {python: m:f}\n"
         "num_fewshot: 5\n", "recipe.yaml:3: num_fewshot: an lm-eval option, not supported"),
        ("genome: {models: [a, b], merge_method: slerp}\nevaluation: {python: m:f}\n",
         "recipe.yaml:1: genome.merge_method: Input should be 'linear', 'task_arithmetic', "
         "'ties' or 'dare_ties'"),
        ("genome: {models: [a], merge_method: ties}\nevaluation: {python: m:f}\n",
         "recipe.yaml:1: genome: merge method 'ties' needs genome.base_model"),
        ("genome: {models: [a], merge_method: linear}\n",
         "recipe.yaml: evaluation: required field is missing"),
        ("genome: {models: [a], merge_method: linear}\nevaluation: {python: m:f}\n"
         "search: {generations: 0}\n",
         "recipe.yaml:3: search.generations: Input should be greater than 0"),
    ],
)
def test_unsupported_or_bad_fields_are_one_line(tmp_path, run_cli, text, expected):
    recipe = write_recipe(tmp_path, text)
    res = run_cli("evolve", recipe, tmp_path / "out")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert lines[0].startswith(f"error: {expected}"), lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_plain_merge_points_an_evolve_config_to_merge_evolve(tmp_path, run_cli):
    res = run_cli(write_recipe(tmp_path, LM_EVAL), tmp_path / "out")
    assert res.code == 2
    assert res.err.strip() == ("error: recipe.yaml:2: genome: this is a mergekit-evolve config "
                               "(it has 'genome', 'tasks'); run it with `merge evolve CONFIG "
                               "OUT`")


def test_custom_scorer_needs_allow_code(tmp_path, run_cli, vits):
    recipe = write_recipe(tmp_path, evolve_config(vits[1:]))
    res = run_cli("evolve", recipe, tmp_path / "out")
    assert res.code == 2
    assert res.err.strip().splitlines() == [
        "error: evaluation.python: this recipe runs code (tests.evolve.scorers:closeness); a "
        "shared recipe must not run code by surprise: read it, then pass --allow-code"]
    assert not (tmp_path / "out").exists()


def test_layer_granularity_must_divide_the_ingredients_layers(tmp_path, run_cli, vits):
    recipe = write_recipe(tmp_path, evolve_config(vits[1:], genome="layer_granularity: 3"))
    res = run_cli("evolve", recipe, tmp_path / "out", "--allow-code")
    assert res.code == 2
    assert res.err.strip() == ("error: genome.layer_granularity: 3 does not divide the "
                               "models' 2 layers")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()

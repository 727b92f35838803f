"""The evaluation: and soup: blocks are checked with the recipe, naming the field."""

from __future__ import annotations

import pytest

from tests.conftest import write_recipe

HEAD = "merge_method: greedy_soup\nmodels:\n  - model: a\n"


@pytest.mark.parametrize(("body", "message"), [
    ("", "merge method 'greedy_soup' chooses on held-out data: add an evaluation: block"),
    ("evaluation: {task: classification}\n", "evaluation: task 'classification' needs 'data'"),
    ("evaluation: {task: perplexity, python: 'm:f', data: x.txt}\n", "give exactly one of"),
    ("evaluation: {python: 'nocolon'}\n", "python must be 'package.module:function'"),
    ("evaluation: {python: 'm:f'}\nsoup: {order: best}\n",
     "soup.order: Input should be 'score', 'given' or 'random'"),
    ("evaluation: {python: 'm:f'}\nsoup: {steps: 3}\n", "soup.steps: unknown key"),
])
def test_bad_blocks_are_named(tmp_path, run_cli, body, message):
    res = run_cli("validate", write_recipe(tmp_path, HEAD + body))
    assert res.code == 2
    assert message in res.err


def test_soup_block_needs_a_soup_method(tmp_path, run_cli):
    recipe = "merge_method: linear\nmodels:\n  - model: a\nsoup: {order: given}\n"
    res = run_cli("validate", write_recipe(tmp_path, recipe))
    assert res.code == 2 and "soup: options are for soup methods" in res.err


def test_valid_soup_recipe_and_methods_listing(tmp_path, run_cli):
    res = run_cli("validate", write_recipe(
        tmp_path, HEAD + "evaluation: {python: 'm:f'}\nsoup: {comparison: '>'}\n"))
    assert res.code == 0, res.err
    res = run_cli("methods")
    for name in ("greedy_soup", "learned_soup", "subset_search", "wise_ft", "ensemble"):
        assert f"\n{name}: " in res.out
    assert "soup.comparison (default '>=')" in res.out

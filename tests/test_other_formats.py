"""mergekit-moe and mergekit-evolve configs are recognised by their keys and answered with
one line naming the format, never "unknown key" (a mergekit-moe config is built by `merge`
and `merge moe`: tests/moe/)."""

from __future__ import annotations

import pytest

from tests.conftest import write_recipe

MOE = """base_model: mistralai/Mistral-7B-v0.1
gate_mode: hidden
dtype: bfloat16
experts:
  - source_model: teknium/OpenHermes-2.5-Mistral-7B
    positive_prompts: ["chat"]
"""

EVOLVE = """genome:
  models: [a, b]
  merge_method: task_arithmetic
  base_model: a
tasks:
  - name: eq_bench
    weight: 1.0
"""


@pytest.mark.parametrize(
    ("text", "line", "key", "fmt", "keys", "tail"),
    [
        (
            MOE,
            2,
            "gate_mode",
            "a mergekit-moe config",
            "'experts', 'gate_mode'",
            "build it with `merge moe CONFIG OUT` (or `merge CONFIG OUT`)",
        ),
        (
            EVOLVE,
            2,
            "genome",
            "a mergekit-evolve config",
            "'genome', 'tasks'",
            "run it with `merge evolve CONFIG OUT`",
        ),
        (
            "experts: []\n",
            1,
            "experts",
            "a mergekit-moe config",
            "'experts'",
            "build it with `merge moe CONFIG OUT` (or `merge CONFIG OUT`)",
        ),
    ],
)
def test_other_mergekit_formats_get_one_line(tmp_path, run_cli, text, line, key, fmt, keys, tail):
    recipe = write_recipe(tmp_path, text)
    runs = [("validate", recipe)] + ([] if "moe" in fmt else [(recipe, tmp_path / "out")])
    for args in runs:
        res = run_cli(*args)
        assert res.code == 2
        lines = res.err.strip().splitlines()
        assert len(lines) == 1, res.err
        assert lines[0].startswith(
            f"error: recipe.yaml:{line}: {key}: this is {fmt} (it has {keys}); "
        ), lines[0]
        assert lines[0].endswith(tail)
        assert "unknown key" not in lines[0]
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MOE, ["recipe.yaml: experts_per_token: 2 experts per token, but only 1 expert"]),
        (
            MOE + "experts_per_token: 1\n",
            ["recipe.yaml:1: base_model: model 'mistralai/Mistral-7B-v0.1' is not in the"],
        ),
        (
            "experts: []\n",
            [
                "recipe.yaml: base_model: required field is missing",
                "recipe.yaml:1: experts: List should have at least 1 item",
            ],
        ),
    ],
)
def test_merge_builds_a_moe_config(tmp_path, run_cli, text, expected):
    """`merge CONFIG OUT` hands a mergekit-moe config to the MoE build (offline here, so
    the hub model is not found; tests/moe/ builds real ones)."""
    res = run_cli(write_recipe(tmp_path, text), tmp_path / "out", "--offline")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == len(expected), res.err
    for line, want in zip(lines, expected, strict=True):
        assert line.startswith(f"error: {want}"), line
    assert not (tmp_path / "out").exists()

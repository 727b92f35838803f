"""mergekit-moe and mergekit-evolve configs are recognised by their keys and answered with
one line naming the format, never "unknown key"."""

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
        (MOE, 2, "gate_mode", "a mergekit-moe config", "'experts', 'gate_mode'",
         "are not supported yet"),
        (EVOLVE, 2, "genome", "a mergekit-evolve config", "'genome', 'tasks'",
         "run it with `merge evolve CONFIG OUT`"),
        ("experts: []\n", 1, "experts", "a mergekit-moe config", "'experts'",
         "are not supported yet"),
    ],
)
def test_other_mergekit_formats_get_one_line(tmp_path, run_cli, text, line, key, fmt, keys,
                                             tail):
    recipe = write_recipe(tmp_path, text)
    for args in (("validate", recipe), (recipe, tmp_path / "out")):
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

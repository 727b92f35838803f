"""Sweeps: `merge -m RECIPE OUT key=v1,v2` runs each setting into its own folder."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import load_tensors, write_recipe
from tests.soups.scorers import TEST_TARGET, VAL_TARGET


def test_sweep_runs_each_setting_and_summarises(tmp_path, ingredients, run_cli):
    a, b = ingredients([0.5, 1.0])
    recipe = write_recipe(tmp_path, f"""
merge_method: linear
models:
  - model: {a}
    parameters: {{weight: 1.0}}
  - model: {b}
evaluation:
  python: tests.soups.scorers:distance
""")
    out = tmp_path / "sweep"
    res = run_cli("-m", recipe, out, "models.0.parameters.weight=1,2,3", "--quiet",
                  "--allow-code")
    assert res.code == 0, res.err
    summary = json.loads((out / "sweep_summary.json").read_text())
    assert [r["overrides"] for r in summary] == [[f"models.0.parameters.weight={w}"]
                                                 for w in (1, 2, 3)]
    ta, tb = load_tensors(a), load_tensors(b)
    for row, w in zip(summary, (1, 2, 3), strict=True):
        x = (w * 0.5 + 1.0) / (w + 1)
        assert row["val"] == pytest.approx(-round(abs(x - VAL_TARGET), 6), abs=1e-6)
        assert row["test"] == pytest.approx(-round(abs(x - TEST_TARGET), 6), abs=1e-6)
        merged = load_tensors(out / row["run"])
        name = "classifier.weight"
        torch.testing.assert_close(merged[name], (w * ta[name] + tb[name]) / (w + 1))
    assert (out / "sweep_summary.md").read_text().count("\n") == 2 + 3

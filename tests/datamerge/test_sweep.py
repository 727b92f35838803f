"""Sweeps over a data-driven recipe: `merge -m RECIPE OUT datamerge.alpha=0.5,1.0`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.datamerge.conftest import read_output, recipe_text


def test_a_sweep_runs_each_regmean_setting_as_a_plain_run_would(
    vit_setup, run_merge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergekit_like.cli import main

    folders, data = vit_setup
    text = recipe_text("regmean", folders, data, "alpha: 0.9")
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(text)
    out = tmp_path / "sweep"
    monkeypatch.setenv("MERGEKIT_LIKE_CACHE", str(tmp_path / "cache"))
    assert main(["-m", str(recipe), str(out), "--quiet", "datamerge.alpha=0.5,1.0"]) == 0
    rows = json.loads((out / "sweep_summary.json").read_text())
    assert [r["overrides"] for r in rows] == [["datamerge.alpha=0.5"], ["datamerge.alpha=1.0"]]
    outputs = []
    for row, alpha in zip(rows, ("0.5", "1.0"), strict=True):
        assert "error" not in row, row
        folder = out / row["run"]
        report = json.loads((folder / "datamerge_report.json").read_text())
        assert report["options"]["alpha"] == float(alpha)
        assert row["val"] == report["scores"]["val"]["score"]
        assert row["test"] == report["scores"]["test"]["score"]
        assert row["val"] is not None and row["test"] is not None
        direct = read_output(run_merge(text.replace("alpha: 0.9", f"alpha: {alpha}")))
        swept = read_output(folder)
        assert swept.keys() == direct.keys()
        for name in direct:  # the same bytes as `merge RECIPE OUT` with that setting
            assert torch.equal(swept[name], direct[name]), name
        outputs.append(swept)
    name = "vit.encoder.layer.0.attention.attention.query.weight"
    assert not torch.equal(outputs[0][name], outputs[1][name])  # alpha changed the solve

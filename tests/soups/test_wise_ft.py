"""wise_ft: every alpha scored, the best on val written as (1-alpha)*base + alpha*fine-tuned."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import load_tensors, write_recipe
from tests.soups.conftest import assert_costs, soup_recipe
from tests.soups.scorers import TEST_TARGET, VAL_TARGET


def test_alpha_sweep(tmp_path, ingredients, run_cli):
    base, tuned = ingredients([0.0, 1.0])  # the scored weight x equals alpha
    recipe = write_recipe(tmp_path, soup_recipe("wise_ft", [tuned], extra=f"base_model: {base}\n"))
    out = tmp_path / "out"
    res = run_cli(recipe, out, "--quiet", "--allow-code")
    assert res.code == 0, res.err
    report = json.loads((out / "soup_report.json").read_text())
    alphas = [i / 10 for i in range(11)]
    sweep = report["details"]["alphas"]
    assert [a["alpha"] for a in sweep] == pytest.approx(alphas)
    assert_costs(sweep)  # every alpha has its cost
    md = (out / "soup_report.md").read_text()
    a = sweep[7]
    assert (f"| 0.7 | {a['val']:.4f} | - | {a['test']:.4f} | - | {a['build_s']:.3f} | "
            f"{a['eval_s']:.3f} | {a['peak_rss_bytes'] / 2 ** 20:.1f} |") in md
    for got, a in zip(sweep, alphas, strict=True):
        assert got["val"] == pytest.approx(-round(abs(a - VAL_TARGET), 6), abs=1e-6)
        assert got["test"] == pytest.approx(-round(abs(a - TEST_TARGET), 6), abs=1e-6)
    assert report["details"]["best_alpha"] == pytest.approx(0.7)  # |0.7 - 0.6875| is least
    b, t = load_tensors(base), load_tensors(tuned)
    for name, w in load_tensors(out).items():
        torch.testing.assert_close(w, 0.3 * b[name] + 0.7 * t[name])
    assert (out / "score_vs_alpha.png").stat().st_size > 1000
    assert [r["name"] for r in report["table"]] == ["base (zero-shot)", "fine-tuned", "wise_ft"]


def test_wise_ft_needs_base(tmp_path, ingredients, run_cli):
    models = ingredients([0.0, 1.0])
    recipe = write_recipe(tmp_path, soup_recipe("wise_ft", models))
    res = run_cli(recipe, tmp_path / "out", "--quiet", "--allow-code")
    assert res.code == 2 and "needs a base_model" in res.err

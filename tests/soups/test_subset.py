"""subset_search: every non-empty subset scored; the best (ties: smaller, then first) written."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from tests.conftest import load_tensors, write_recipe
from tests.soups.conftest import assert_costs, soup_recipe
from tests.soups.scorers import VAL_TARGET

BIASES = [0.75, 0.5, 1.0, 0.25]


def score(x: float) -> float:
    return -round(abs(x - VAL_TARGET), 6)


def test_best_subset_is_found_and_written(tmp_path, ingredients, run_cli):
    models = ingredients(BIASES)
    recipe = write_recipe(tmp_path, soup_recipe("subset_search", models))
    out = tmp_path / "out"
    res = run_cli(recipe, out, "--quiet", "--allow-code")
    assert res.code == 0, res.err
    report = json.loads((out / "soup_report.json").read_text())
    subsets = [s for n in range(1, 5) for s in itertools.combinations(range(4), n)]
    scores = [score(sum(BIASES[k] for k in s) / len(s)) for s in subsets]
    assert len(report["details"]["subsets"]) == 2 ** 4 - 1
    assert_costs(report["details"]["subsets"])  # every subset scored has its cost
    md = (out / "soup_report.md").read_text()
    s = report["details"]["subsets"][-1]
    assert (f"| {', '.join(s['subset'])} | {s['val']:.4f} | {s['build_s']:.3f} | "
            f"{s['eval_s']:.3f} | {s['peak_rss_bytes'] / 2 ** 20:.1f} |") in md
    for got, s, want in zip(report["details"]["subsets"], subsets, scores, strict=True):
        assert got["subset"] == [str(models[k]) for k in s]
        assert got["val"] == pytest.approx(want, abs=1e-6)
    best = max(range(len(subsets)), key=lambda i: (scores[i], -i))
    assert subsets[best] == (0, 1, 2, 3) or len(subsets[best]) < 4
    assert report["details"]["best"] == [str(models[k]) for k in subsets[best]]
    ins = [load_tensors(models[k]) for k in subsets[best]]
    for name, t in load_tensors(out).items():
        torch.testing.assert_close(t, sum(i[name] for i in ins) / len(ins))


def test_too_many_subsets_is_refused(tmp_path, ingredients, run_cli):
    models = ingredients(BIASES)
    recipe = write_recipe(tmp_path, soup_recipe("subset_search", models,
                                                soup="max_subsets: 10"))
    res = run_cli(recipe, tmp_path / "out", "--quiet", "--allow-code")
    assert res.code == 2
    assert "soup.max_subsets: 4 ingredients give 15 subsets" in res.err
    assert not (tmp_path / "out").exists()
    res = run_cli(recipe, tmp_path / "out", "--quiet", "--allow-code", "+soup.max_size=2")
    assert res.code == 0, res.err
    report = json.loads((tmp_path / "out" / "soup_report.json").read_text())
    assert len(report["details"]["subsets"]) == 4 + 6

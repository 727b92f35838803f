"""greedy_soup with a deterministic scorer: accepted ingredients, steps, report, output."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import load_tensors, write_recipe
from tests.soups.conftest import soup_recipe
from tests.soups.scorers import TEST_TARGET, VAL_TARGET

BIASES = [0.75, 0.5, 1.0, 0.25, 0.625]


def score(x: float, target: float = VAL_TARGET) -> float:
    return -round(abs(x - target), 6)


def expected_greedy(biases, order, strict=False):
    """Recipe 1 written out on the scored weight: the soup's x is the mean of its members."""
    soup = [order[0]]
    best = score(biases[order[0]])
    steps = [(order[0], best, True)]
    for k in order[1:]:
        cand = score(sum(biases[i] for i in soup + [k]) / (len(soup) + 1))
        ok = cand > best if strict else cand >= best
        steps.append((k, cand, ok))
        if ok:
            soup.append(k)
            best = cand
    return soup, steps


def run_greedy(tmp_path, run_cli, models, soup=""):
    recipe = write_recipe(tmp_path, soup_recipe("greedy_soup", models, soup=soup))
    out = tmp_path / "out"
    res = run_cli(recipe, out, "--quiet", "--allow-code")
    assert res.code == 0, res.err
    return out, json.loads((out / "soup_report.json").read_text())


def test_greedy_by_score_accepts_what_recipe_1_accepts(tmp_path, ingredients, run_cli):
    models = ingredients(BIASES)
    out, report = run_greedy(tmp_path, run_cli, models)
    # individual scores -|b - 11/16|: 0.75 and 0.625 tie at -1/16 (recipe order breaks it)
    order = sorted(range(5), key=lambda i: (-score(BIASES[i]), i))
    assert order == [0, 4, 1, 2, 3]
    soup, steps = expected_greedy(BIASES, order)
    assert soup == [0, 4]
    details = report["details"]
    assert details["soup"] == [str(models[k]) for k in soup]
    assert [(s["ingredient"], s["accepted"]) for s in details["steps"]] == [
        (str(models[k]), ok) for k, _, ok in steps]
    for got, (_, want, _) in zip(details["steps"], steps, strict=True):
        assert got["val"] == pytest.approx(want, abs=1e-6)
    assert details["running_sum_on_disk"] is False
    # the written soup is the plain mean of the accepted ingredients, tensor by tensor
    ins = [load_tensors(models[k]) for k in soup]
    written = load_tensors(out)
    assert set(written) == set(ins[0])
    for name, t in written.items():
        torch.testing.assert_close(t, (ins[0][name] + ins[1][name]) / 2)
    # the table: best single model, second best, uniform soup, greedy soup (no ensemble:
    # a custom scorer gives no logits)
    rows = {r["name"]: r for r in report["table"]}
    assert list(rows) == ["best individual", "second best individual", "uniform soup",
                          "greedy soup"]
    mean_soup = sum(BIASES[k] for k in soup) / len(soup)
    assert rows["greedy soup"]["val"] == pytest.approx(score(mean_soup), abs=1e-6)
    assert rows["greedy soup"]["test"] == pytest.approx(score(mean_soup, TEST_TARGET), abs=1e-6)
    assert rows["greedy soup"]["ingredients"] == 2
    assert rows["uniform soup"]["val"] == pytest.approx(score(sum(BIASES) / 5), abs=1e-6)
    assert rows["best individual"]["detail"] == str(models[0])
    assert rows["second best individual"]["detail"] == str(models[4])
    # uniform curve: the uniform soup of the first j ingredients tried
    uniform = report["curves"]["uniform soup"]
    for j, point in enumerate(uniform, start=1):
        x = sum(BIASES[k] for k in order[:j]) / j
        assert point[:2] == pytest.approx([j, score(x)], abs=1e-6)
    md = (out / "soup_report.md").read_text()
    members = ", ".join(str(models[k]) for k in soup)  # the row names its ingredients
    assert f"| greedy soup ({members}) | {score(mean_soup):.4f} |" in md
    assert "| 3 | " + str(models[1]) in md and "| no |" in md
    assert (out / "score_vs_ingredients.png").stat().st_size > 1000
    assert (out / "config.json").is_file() and (out / "README.md").is_file()
    assert not list(out.glob(".soup-running-sum*"))


@pytest.mark.parametrize(("comparison", "want"), [(">=", [0, 1, 2]), (">", [0, 1])])
def test_comparison_decides_ties(tmp_path, ingredients, run_cli, comparison, want):
    biases = [0.75, 0.625, 0.6875, 1.0]  # the third leaves the soup's mean (11/16) unchanged
    models = ingredients(biases)
    _, report = run_greedy(tmp_path, run_cli, models,
                           soup=f"comparison: '{comparison}'\norder: given")
    soup, _ = expected_greedy(biases, [0, 1, 2, 3], strict=comparison == ">")
    assert soup == want
    assert report["details"]["soup"] == [str(models[k]) for k in want]


def test_random_order_is_seeded(tmp_path, ingredients, run_cli):
    import random

    models = ingredients(BIASES)
    _, report = run_greedy(tmp_path, run_cli, models, soup="order: random\nseed: 3")
    order = list(range(5))
    random.Random(3).shuffle(order)
    assert report["details"]["tried"] == [str(models[k]) for k in order]
    soup, _ = expected_greedy(BIASES, order)
    assert report["details"]["soup"] == [str(models[k]) for k in soup]


def test_running_sum_on_disk_gives_the_same_soup(tmp_path, ingredients, run_cli):
    models = ingredients(BIASES)
    out, report = run_greedy(tmp_path, run_cli, models, soup="memory_budget: 1KB")
    assert report["details"]["running_sum_on_disk"] is True
    assert report["details"]["soup"] == [str(models[0]), str(models[4])]
    assert not list(tmp_path.rglob(".soup-running-sum*"))


def test_custom_code_needs_allow_code(tmp_path, ingredients, run_cli):
    models = ingredients([0.5, 0.75])
    recipe = write_recipe(tmp_path, soup_recipe("greedy_soup", models))
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 2
    assert "evaluation.python" in res.err and "--allow-code" in res.err
    assert not (tmp_path / "out").exists()


def test_soup_method_needs_evaluation_block(tmp_path, ingredients, run_cli):
    recipe = write_recipe(tmp_path, "merge_method: greedy_soup\nmodels:\n  - model: a\n")
    res = run_cli("validate", recipe)
    assert res.code == 2 and "add an evaluation: block" in res.err

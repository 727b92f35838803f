"""The soup report as users read it (tiny BERT, token-id data): example counts beside each
score, greedy soup's ingredients in its row and in the model card, learned soup's val score
marked in-sample, long tables sorted and cut, and what the plots show."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_recipe
from tests.soups.bert import make_berts, padded, token_rows

N_VAL, N_TEST = 20, 14


@pytest.fixture(scope="module")
def berts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_berts(tmp_path_factory.mktemp("berts"))


def _npz(tmp_path: Path) -> Path:
    arrays = {}
    for s, rs in (("val", token_rows(N_VAL, 1)), ("test", token_rows(N_TEST, 2))):
        arrays[f"{s}_input_ids"], arrays[f"{s}_attention_mask"] = padded(rs)
        arrays[f"{s}_labels"] = np.array([r["y"] for r in rs])
    np.savez(tmp_path / "data.npz", **arrays)
    return tmp_path / "data.npz"


def _run(tmp_path: Path, models: list[Path], method: str, run_cli, soup: str = "") -> Path:
    lines = [f"merge_method: {method}", "models:"] + [f"  - model: {m}" for m in models]
    lines += [
        "evaluation:",
        "  task: classification",
        f"  data: {_npz(tmp_path)}",
        "  batch_size: 8",
        soup,
    ]
    out = tmp_path / "out"
    res = run_cli(write_recipe(tmp_path, "\n".join(lines) + "\n"), out, "--quiet")
    assert res.code == 0, res.err
    return out


def test_greedy_report_counts_members_and_card(tmp_path, berts, run_cli):
    out = _run(tmp_path, berts, "greedy_soup", run_cli, "soup: {comparison: '>'}")
    report = json.loads((out / "soup_report.json").read_text())
    rows = {r["name"]: r for r in report["table"]}
    greedy = rows["greedy soup"]
    soup = report["details"]["soup"]
    assert greedy["members"] == soup and greedy["ingredients"] == len(soup)
    assert greedy["val_examples"] == N_VAL and greedy["test_examples"] == N_TEST
    md = (out / "soup_report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| greedy soup"))
    correct = round(greedy["val"] * N_VAL)
    assert f"{greedy['val']:.4f} ({correct}/{N_VAL})" in line
    assert all(Path(m).name in line for m in soup)
    card = (out / "README.md").read_text()
    assert "## Soup" in card
    section = card.split("## Soup", 1)[1]
    for m in berts:
        assert (str(m) in section.split("Not accepted")[0]) == (str(m) in soup)
    assert f"{correct}/{N_VAL}" in section


def test_learned_val_is_marked_in_sample(tmp_path, berts, run_cli):
    out = _run(tmp_path, berts, "learned_soup", run_cli, "soup: {steps: 2, plots: false}")
    report = json.loads((out / "soup_report.json").read_text())
    rows = {r["name"]: r for r in report["table"]}
    assert rows["learned soup"]["val_in_sample"] is True
    assert rows["uniform soup"]["val_in_sample"] is False
    md = (out / "soup_report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| learned soup"))
    assert "in-sample" in line


def test_long_ingredient_table_is_sorted_and_cut(tmp_path, run_cli):
    from mergekit_like.soups.report import MAX_TABLE_ROWS, markdown

    n = MAX_TABLE_ROWS + 5
    vals = [(7 * i % n) / n for i in range(n)]
    ing = [
        {
            "name": f"m{i}",
            "val": v,
            "val_loss": None,
            "val_examples": 10,
            "test": None,
            "test_loss": None,
            "test_examples": None,
        }
        for i, v in enumerate(vals)
    ]
    data = {
        "method": "greedy_soup",
        "metric": "accuracy",
        "higher_is_better": True,
        "val_split": "val",
        "test_split": None,
        "table": [],
        "ingredients": ing,
        "chosen": None,
        "written": False,
        "details": {},
        "curves": {},
    }
    md = markdown(data, [])
    section = md.split("## Ingredients", 1)[1]
    names = [x.split("|")[1].strip() for x in section.splitlines() if x.startswith("| m")]
    want = [f"m{i}" for i in sorted(range(n), key=lambda i: -vals[i])][:MAX_TABLE_ROWS]
    assert names == want
    assert "5 more in soup_report.json" in section


def test_plot_series_show_the_methods_own_results(tmp_path, berts, run_cli):
    from mergekit_like.soups.plots import ingredient_series

    out = _run(tmp_path, berts, "learned_soup", run_cli, "soup: {steps: 2}")
    report = json.loads((out / "soup_report.json").read_text())
    series = {s["label"]: s for s in ingredient_series(report)}
    learned = series["learned soup"]
    row = next(r for r in report["table"] if r["name"] == "learned soup")
    assert learned["x"] == [row["ingredients"]] and learned["val"] == [row["val"]]
    assert learned["test"] == [row["test"]]
    indiv = series["individual ingredients"]
    assert indiv["val"] == [i["val"] for i in report["ingredients"]]
    assert indiv["test"] == [i["test"] for i in report["ingredients"]]
    colours = [s["colour"] for s in series.values()]
    assert len(set(colours)) == len(colours)  # one colour per model, val and test alike
    assert (out / "score_vs_ingredients.png").is_file()


def test_greedy_plot_has_its_test_score(tmp_path, berts, run_cli):
    from mergekit_like.soups.plots import ingredient_series

    out = _run(tmp_path, berts, "greedy_soup", run_cli)
    report = json.loads((out / "soup_report.json").read_text())
    series = {s["label"]: s for s in ingredient_series(report)}
    row = next(r for r in report["table"] if r["name"] == "greedy soup")
    greedy = series["greedy soup"]
    assert greedy["test"][-1] == row["test"] and greedy["x"][-1] == row["ingredients"]

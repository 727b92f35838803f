"""The data-driven methods in the recipe: their names, options and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergekit_like.cli import main
from tests.datamerge.conftest import recipe_text


def run(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    code = main([str(recipe), str(tmp_path / "out"), "--quiet"])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("method", "options", "needle"),
    [
        ("regmean", "alpha: 2", "datamerge.alpha: Input should be less than or equal to 1"),
        ("fisher", "epsilon: -1", "datamerge.epsilon"),
        ("fisher", "alpha: 0.5", "datamerge.alpha: unknown key (merge method 'fisher')"),
        ("adamerging", "granularity: block", "datamerge.granularity"),
    ],
)
def test_bad_options_name_the_field(vit_setup, tmp_path, capsys, method, options, needle) -> None:
    folders, data = vit_setup
    code, err = run(
        tmp_path,
        recipe_text(
            method, folders[:2], data, options, base=folders[2] if method == "adamerging" else None
        ),
        capsys,
    )
    assert code == 2
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_adamerging_needs_a_base_model(vit_setup, tmp_path, capsys) -> None:
    folders, data = vit_setup
    code, err = run(tmp_path, recipe_text("adamerging", folders[:2], data), capsys)
    assert code == 2 and "merge_method" in err and "needs a base_model" in err


def test_a_data_driven_method_needs_evaluation_data(vit_setup, tmp_path, capsys) -> None:
    folders, _ = vit_setup
    text = f"merge_method: fisher\nmodels:\n  - model: {folders[0]}\n  - model: {folders[1]}\n"
    code, err = run(tmp_path, text, capsys)
    assert code == 2 and "evaluation" in err and "computes its statistics on data" in err


def test_fisher_weights_must_be_positive_numbers(vit_setup, tmp_path, capsys) -> None:
    folders, data = vit_setup
    code, err = run(tmp_path, recipe_text("fisher", folders[:2], data, weights=[1.0, -1.0]), capsys)
    assert code == 2 and "models[1].parameters.weight" in err


def test_datamerge_block_on_another_method_is_refused(vit_setup, tmp_path, capsys) -> None:
    folders, data = vit_setup
    text = recipe_text("fisher", folders[:2], data).replace("fisher", "linear")
    code, err = run(tmp_path, text, capsys)
    assert code == 2 and "datamerge: options are for fisher, regmean, adamerging" in err


def test_methods_lists_them_and_validate_checks_the_ingredients(
    vit_setup, tmp_path, capsys
) -> None:
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    for name in ("fisher:", "regmean:", "adamerging:", "datamerge.alpha (default 0.95)"):
        assert name in listing
    folders, data = vit_setup
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text("regmean", folders[:2], data))
    assert main(["validate", str(recipe)]) == 0
    assert main(["plan", str(recipe), "--summary"]) == 0

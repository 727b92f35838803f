"""``model@revision`` wherever a model is named (mergekit's syntax): hub ids in the local
cache, local folders (the revision ignored, as mergekit does), and ``base+lora`` forms."""

from __future__ import annotations

import shutil

import pytest
import torch

from mergekit_like.plan.build import build_plan
from mergekit_like.recipe.loading import load_recipe
from tests.conftest import load_tensors, write_recipe
from tests.io.test_lora import MODULES, _adapter

MAIN = "0123456789abcdef0123456789abcdef01234567"
V2 = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def hub_cache(tmp_path, llama_family, monkeypatch):
    """acme/tiny in a local hub cache: main is llama_family's math, tag v2 its code."""
    repo = tmp_path / "hub" / "models--acme--tiny"
    shutil.copytree(llama_family["math"], repo / "snapshots" / MAIN)
    shutil.copytree(llama_family["code"], repo / "snapshots" / V2)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    (repo / "refs" / "v2").write_text(V2)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return repo


def test_hub_revisions_by_tag_and_commit(tmp_path, hub_cache):
    recipe = write_recipe(
        tmp_path,
        f"""
merge_method: task_arithmetic
base_model: acme/tiny@{MAIN}
models:
  - model: acme/tiny@v2
  - model: acme/tiny
tokenizer_source: acme/tiny@v2
""",
    )
    plan = build_plan(load_recipe(recipe))
    assert [m.path for m in plan.models] == [hub_cache / "snapshots" / s for s in (MAIN, V2, MAIN)]
    assert plan.output.tokenizer_dir == hub_cache / "snapshots" / V2


def test_local_folder_with_a_revision(tmp_path, llama_family, run_cli):
    f = llama_family
    recipe = write_recipe(
        tmp_path,
        f"""
merge_method: linear
models:
  - model: {f["math"]}@main
  - model: {f["code"]}@v1.0
""",
    )
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    a, b, out = load_tensors(f["math"]), load_tensors(f["code"]), load_tensors(tmp_path / "out")
    for n, t in out.items():
        torch.testing.assert_close(t, (a[n] + b[n]) / 2, rtol=0, atol=0)


def test_revisions_inside_a_lora_reference(tmp_path, llama_family, run_cli):
    base = load_tensors(llama_family["base"])
    factors = _adapter(tmp_path / "lora", base, MODULES)
    recipe = write_recipe(
        tmp_path,
        f"merge_method: passthrough\nmodels:\n"
        f"  - model: {llama_family['base']}@main+"
        f"{tmp_path / 'lora'}@abc123\n",
    )
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    out = load_tensors(tmp_path / "out")
    for m, (a, b) in factors.items():
        torch.testing.assert_close(out[f"{m}.weight"], base[f"{m}.weight"] + 2.0 * (b @ a))


def test_two_revisions_are_one_located_error(tmp_path, llama_family, run_cli):
    recipe = write_recipe(
        tmp_path, f"merge_method: linear\nmodels:\n  - model: {llama_family['math']}@a@b\n"
    )
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 2
    assert res.err.strip().splitlines() == [
        f"error: recipe.yaml:3: models[0].model: model '{llama_family['math']}@a@b': more "
        "than one '@'; write path@revision"
    ]

"""Multi-document recipes (mergekit-multi) and Windows-style paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mergekit_like.errors import RecipeError
from mergekit_like.recipe.loading import load_recipe_documents
from mergekit_like.recipe.multi import order_documents
from tests.conftest import load_tensors, write_recipe


def _pipeline(f: dict[str, Path]) -> str:
    return f"""name: final
merge_method: linear
models:
  - model: soup-ab
    parameters: {{weight: 1.0}}
  - model: {f['chat']}
    parameters: {{weight: 3.0}}
---
name: soup-ab
merge_method: linear
models: [{{model: {f['math']}}}, {{model: {f['code']}}}]
"""


def test_documents_run_in_dependency_order_and_resume(tmp_path, llama_family, run_cli):
    f = llama_family
    recipe = write_recipe(tmp_path, _pipeline(f))
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    a, b, c = (load_tensors(f[k]) for k in ("math", "code", "chat"))
    inter = load_tensors(tmp_path / "out-intermediates" / "soup-ab")
    final = load_tensors(tmp_path / "out")
    for n, t in final.items():
        torch.testing.assert_close(inter[n], (a[n] + b[n]) / 2)
        torch.testing.assert_close(t, ((a[n] + b[n]) / 2 + 3 * c[n]) / 4)
    res = run_cli(recipe, tmp_path / "out", "--force")
    assert res.code == 0 and "soup-ab:" in res.out and "exists, skipping" in res.out
    res = run_cli("validate", recipe)
    assert res.code == 0 and "run in order: soup-ab -> final" in res.out


@pytest.mark.parametrize(("text", "message"), [
    ("name: a\nmerge_method: linear\nmodels: [{model: b}]\n---\n"
     "name: b\nmerge_method: linear\nmodels: [{model: a}]\n", "cycle"),
    ("name: a\nmerge_method: linear\nmodels: [{model: x}]\n---\n"
     "name: b\nmerge_method: linear\nmodels: [{model: y}]\n", "one final merge"),
    ("name: a\nmerge_method: linear\nmodels: [{model: x}]\n---\n"
     "name: a\nmerge_method: linear\nmodels: [{model: a}]\n", "two documents are named 'a'"),
])
def test_bad_pipelines(tmp_path, text, message):
    docs = load_recipe_documents(write_recipe(tmp_path, text))
    with pytest.raises(RecipeError, match=message):
        order_documents(docs)


def test_unnamed_document_runs_last_and_no_overrides(tmp_path):
    # mergekit-multi: the unnamed document is the output, wherever it stands in the file
    path = write_recipe(tmp_path, "merge_method: linear\nmodels: [{model: x}]\n---\n"
                                  "name: b\nmerge_method: linear\nmodels: [{model: y}]\n")
    assert [d.recipe.name for d in order_documents(load_recipe_documents(path))] == ["b", None]
    with pytest.raises(RecipeError, match="overrides apply to single-document recipes"):
        load_recipe_documents(path, ["name=z"])


def test_windows_style_relative_paths(tmp_path, llama_family, run_cli, monkeypatch):
    import shutil

    shutil.copytree(llama_family["math"], tmp_path / "models" / "math")
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path, "merge_method: linear\nmodels:\n"
                                    "  - model: models\\math\n"
                                    "  - model: 'models\\math'\n")
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err


def _unnamed_final(f: dict[str, Path]) -> str:
    """mergekit-multi's convention: the document without a name is the output."""
    return f"""name: soup-ab
merge_method: linear
models: [{{model: {f['math']}}}, {{model: {f['code']}}}]
---
name: unused
merge_method: linear
models: [{{model: {f['chat']}}}, {{model: {f['code']}}}]
---
merge_method: linear
models:
  - model: soup-ab
    parameters: {{weight: 1.0}}
  - model: {f['chat']}
    parameters: {{weight: 3.0}}
"""


def test_unnamed_final_document_is_the_output(tmp_path, llama_family, run_cli):
    f = llama_family
    recipe = write_recipe(tmp_path, _unnamed_final(f))
    res = run_cli(recipe, tmp_path / "out", "--quiet")
    assert res.code == 0, res.err
    a, b, c = (load_tensors(f[k]) for k in ("math", "code", "chat"))
    inter = tmp_path / "out-intermediates"
    assert sorted(p.name for p in inter.iterdir()) == ["soup-ab", "unused"]  # as mergekit-multi
    final = load_tensors(tmp_path / "out")
    for n, t in final.items():
        torch.testing.assert_close(t, ((a[n] + b[n]) / 2 + 3 * c[n]) / 4)
    res = run_cli("validate", recipe)
    assert res.code == 0 and res.out.rstrip().endswith("-> (unnamed final merge)"), res.out


def test_only_one_document_may_lack_a_name(tmp_path, run_cli):
    text = ("merge_method: linear\nmodels: [{model: x}]\n---\n"
            "merge_method: linear\nmodels: [{model: y}]\n")
    res = run_cli("validate", write_recipe(tmp_path, text))
    assert res.code == 2
    assert res.err.strip() == ("error: recipe.yaml:4: only one document of a multi-document "
                               "recipe may lack a 'name' (that one is the output)")


@pytest.mark.parametrize("name", ["../victim", "/abs/path", "a/b", "a\\\\b", "..", ".hidden"])
def test_document_names_are_plain_folder_names(tmp_path, llama_family, run_cli, name):
    """A name becomes OUT-intermediates/<name>: a path in it would write (and with --force
    delete) a folder anywhere."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    text = (f'name: "{name}"\nmerge_method: linear\nmodels: [{{model: {llama_family["math"]}}}]\n'
            f'---\nname: final\nmerge_method: linear\nmodels: [{{model: "{name}"}}]\n')
    path = write_recipe(tmp_path, text)
    with pytest.raises(RecipeError, match=r"recipe.yaml:1: name: .*plain folder name"):
        load_recipe_documents(path)
    res = run_cli(path, tmp_path / "out", "--force", "--quiet")
    assert res.code == 2 and len(res.err.splitlines()) == 1, res.err
    assert (victim / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml", "victim"]

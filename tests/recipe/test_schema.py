"""The JSON Schema is current, and every shipped recipe is documented, valid and runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mergekit_like.recipe.schema import recipe_schema

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
SCHEMA_LINE = "# yaml-language-server: $schema="


def test_schema_file_is_current():
    on_disk = json.loads((ROOT / "schemas" / "recipe.schema.json").read_text())
    assert on_disk == recipe_schema(), (
        "schemas/recipe.schema.json is stale: run `merge schema > schemas/recipe.schema.json`")


def test_schema_describes_parameter_values():
    schema = recipe_schema()
    assert set(schema["properties"]) >= {"merge_method", "models", "slices", "base_model",
                                         "parameters", "dtype", "out_dtype", "tokenizer_source"}
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_recipe_is_documented_and_valid(path, run_cli):
    lines = path.read_text().splitlines()
    assert lines[0].startswith(SCHEMA_LINE), "first line must point editors at the schema"
    schema_ref = (path.parent / lines[0][len(SCHEMA_LINE):]).resolve()
    assert schema_ref == ROOT / "schemas" / "recipe.schema.json"
    assert lines[1].startswith("#") and ("merge " in lines[1] or "python -m" in lines[1]), \
        "second line must give the command that runs the recipe"
    res = run_cli("validate", path)
    assert res.code == 0, res.err


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory):
    """The demo models at demo-out/models, relative to a fresh working directory."""
    from mergekit_like.demo import make_family

    root = tmp_path_factory.mktemp("demo")
    make_family(root / "demo-out" / "models", layers=4, hidden=32)
    return root


RUNNABLE = [p for p in RECIPES if "demo-out/models/" in p.read_text()]


@pytest.mark.parametrize("path", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_recipe_runs_on_demo_models(path, demo_models, run_cli, monkeypatch):
    monkeypatch.chdir(demo_models)
    out = demo_models / "out" / path.stem
    res = run_cli(path, out, "--quiet", "--force")
    assert res.code == 0, res.err
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    assert os.path.getsize(next(out.glob("*.safetensors"))) > 0

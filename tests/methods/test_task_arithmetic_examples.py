"""The example recipes of the task-arithmetic family stay valid and plan cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergekit_like.plan.build import plan_from_file

EXAMPLES = Path(__file__).resolve().parents[2] / "recipes" / "examples"
METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
           "breadcrumbs_ties", "della", "della_linear", "sce", "model_stock")


@pytest.mark.parametrize("method", METHODS)
def test_example_recipe_plans_on_tiny_models(method, tmp_path, llama_family):
    path = EXAMPLES / f"{method}.yaml"
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == "# yaml-language-server: $schema=../../schemas/recipe.schema.json"
    assert lines[1] == (f"# Run: python -m mergekit_like.demo && "
                        f"merge recipes/examples/{method}.yaml out/{method}")
    local = tmp_path / path.name
    local.write_text(text.replace("demo-out/models", str(llama_family["base"].parent)))
    plan = plan_from_file(local)
    assert plan.recipe.recipe.merge_method == method
    assert plan.warnings == ()  # every parameter the example sets is used
    assert {t.method for t in plan.tensors} == {method}

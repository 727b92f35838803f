"""The merge, start to end: load the recipe, plan it, execute into a staged folder, publish.

This is the library API behind ``merge RECIPE OUT``::

    from mergekit_like.run import MergeOptions, run_merge
    run_merge(Path("recipes/linear.yaml"), Path("out"), MergeOptions(device="cpu"))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mergekit_like.execute.setup import MergeOptions
from mergekit_like.execute.write import write_model
from mergekit_like.plan.build import build_plan
from mergekit_like.plan.tensors import Plan
from mergekit_like.recipe.loading import LoadedRecipe, load_recipe

__all__ = ["MergeOptions", "run_loaded_recipe", "run_merge", "write_model"]


def run_merge(recipe: Path, out: Path, options: MergeOptions | None = None,
              overrides: Sequence[str] = ()) -> Plan:
    """Load, validate, plan and run a recipe file; returns the plan that was executed."""
    options = options or MergeOptions()
    plan = build_plan(load_recipe(recipe, overrides), allow_crimes=options.allow_crimes)
    write_model(plan, out, options)
    return plan


def run_loaded_recipe(loaded: LoadedRecipe, out: Path, options: MergeOptions,
                      allow_code: bool = False) -> dict[str, Any]:
    """Run one recipe by what it asks for: a data-driven merge (fisher, regmean,
    adamerging), a soup or an evaluated merge, or a plain merge. Returns the run's report
    data (``{}`` for a plain merge); sweeps (``merge -m``) run each setting through it."""
    from mergekit_like.datamerge import DATAMERGE_METHODS
    from mergekit_like.soups import needs_runner

    if loaded.recipe.merge_method in DATAMERGE_METHODS:
        from mergekit_like.datamerge.runner import run_datamerge

        return run_datamerge(loaded, out, options)
    if needs_runner(loaded.recipe):
        from mergekit_like.soups.runner import run_loaded

        return run_loaded(loaded, out, options, allow_code)
    write_model(build_plan(loaded, allow_crimes=options.allow_crimes), out, options)
    return {}

"""The merge, start to end: load the recipe, plan it, execute into a staged folder, publish.

This is the library API behind ``merge RECIPE OUT``::

    from mergekit_like.run import MergeOptions, run_merge
    run_merge(Path("recipes/linear.yaml"), Path("out"), MergeOptions(device="cpu"))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mergekit_like.execute.setup import MergeOptions
from mergekit_like.execute.write import write_model
from mergekit_like.plan.build import build_plan
from mergekit_like.plan.tensors import Plan
from mergekit_like.recipe.loading import load_recipe

__all__ = ["MergeOptions", "run_merge", "write_model"]


def run_merge(recipe: Path, out: Path, options: MergeOptions | None = None,
              overrides: Sequence[str] = ()) -> Plan:
    """Load, validate, plan and run a recipe file; returns the plan that was executed."""
    options = options or MergeOptions()
    plan = build_plan(load_recipe(recipe, overrides), allow_crimes=options.allow_crimes)
    write_model(plan, out, options)
    return plan

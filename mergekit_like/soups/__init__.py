"""Model soups: merges chosen by scoring candidates on held-out data (Wortsman et al., 2022).

Soup methods are not per-tensor functions: they build candidate models, score them with the
recipe's ``evaluation:`` block and write the best one as an ordinary linear merge. They are
registered in :data:`mergekit_like.recipe.soups.SOUP_METHODS` and nowhere else. Importing
this package does not import torch; :mod:`mergekit_like.soups.runner` runs them.

Example recipe::

    merge_method: greedy_soup
    models: [{model: ft-0}, {model: ft-1}, {model: ft-2}]
    evaluation: {task: classification, data: data.npz}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergekit_like.recipe.soups import SOUP_METHODS, SoupMethod

if TYPE_CHECKING:
    from mergekit_like.recipe.models import Recipe


def needs_runner(recipe: Recipe) -> bool:
    """Whether a recipe runs through :mod:`mergekit_like.soups.runner` (a soup method, or a
    merge scored by an ``evaluation:`` block)."""
    return recipe.merge_method in SOUP_METHODS or recipe.evaluation is not None


__all__ = ["SOUP_METHODS", "SoupMethod", "needs_runner"]

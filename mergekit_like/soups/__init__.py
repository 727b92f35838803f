"""Model soups: merges chosen by scoring candidates on held-out data (Wortsman et al., 2022).

Soup methods are not per-tensor functions: they build candidate models, score them with the
recipe's ``evaluation:`` block and write the best one as an ordinary linear merge. They are
registered here, in :data:`SOUP_METHODS`, and nowhere else. Importing this package does not
import torch; :mod:`mergekit_like.soups.runner` runs them.

Example recipe::

    merge_method: greedy_soup
    models: [{model: ft-0}, {model: ft-1}, {model: ft-2}]
    evaluation: {task: classification, data: data.npz}
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from mergekit_like.soups.config import (
    EnsembleParams,
    GreedySoupParams,
    LearnedSoupParams,
    SoupParams,
    SubsetSearchParams,
    WiseFtParams,
)

if TYPE_CHECKING:
    from mergekit_like.recipe import Recipe


@dataclass(frozen=True)
class SoupMethod:
    """A registered soup method.

    Attributes:
        name: the recipe's ``merge_method`` value.
        summary: one line for ``merge methods``.
        params: the model of the recipe's ``soup:`` block for this method.
        base: whether ``base_model`` is required (the zero-shot model of WiSE-FT) or unused.
        writes: whether a model is written (the ensemble baseline is reported only).
        min_models: how many ingredients under ``models:`` it needs.
    """

    name: str
    summary: str
    params: type[SoupParams]
    base: Literal["required", "unused"] = "unused"
    writes: bool = True
    min_models: int = 1

    def describe(self) -> str:
        """A few lines for ``merge methods``: summary and ``soup:`` options with defaults."""
        lines = [f"{self.name}: {self.summary}", "    needs an evaluation: block"]
        if self.base == "required":
            lines.append("    needs base_model")
        for field, info in self.params.model_fields.items():
            default = "required" if info.is_required() else f"default {info.default!r}"
            doc = f" - {info.description}" if info.description else ""
            lines.append(f"    soup.{field} ({default}){doc}")
        return "\n".join(lines)


_SOUPS: tuple[SoupMethod, ...] = (
    SoupMethod("greedy_soup", "add ingredients best-first while the held-out score does not "
               "drop (model soups, Recipe 1)", GreedySoupParams),
    SoupMethod("learned_soup", "mixing coefficients learned by gradient descent on the held-out "
               "loss", LearnedSoupParams),
    SoupMethod("subset_search", "score the average of every non-empty subset, write the best",
               SubsetSearchParams),
    SoupMethod("wise_ft", "sweep alpha in (1-alpha)*base + alpha*fine-tuned, write the best",
               WiseFtParams, base="required"),
    SoupMethod("ensemble", "baseline: average the ingredients' logits; reported, not written",
               EnsembleParams, writes=False),
)

SOUP_METHODS: MappingProxyType[str, SoupMethod] = MappingProxyType({m.name: m for m in _SOUPS})



def needs_runner(recipe: Recipe) -> bool:
    """Whether a recipe runs through :mod:`mergekit_like.soups.runner` (a soup method, or a
    merge scored by an ``evaluation:`` block)."""
    return recipe.merge_method in SOUP_METHODS or recipe.evaluation is not None


__all__ = ["SOUP_METHODS", "SoupMethod", "needs_runner"]

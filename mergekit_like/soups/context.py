"""What every soup method works with, and what it hands back.

A :class:`SoupContext` bundles the ingredients, the live model, the evaluator and the
method's options; every candidate it scores comes with its
:class:`~mergekit_like.soups.cost.Cost` (build and evaluation time, peak RSS). Methods return
a :class:`SoupResult`: the rows of the report's table, the weights of the model to write, and
the method's own details (greedy steps, subsets, alphas, learned coefficients) for the report
and plots.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergekit_like.recipe.soups import SoupParams
from mergekit_like.soups.cost import Cost, Stopwatch
from mergekit_like.soups.evaluation import Evaluator, Score
from mergekit_like.soups.ingredients import Ingredients, RunningSum

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Scored:
    """A candidate's val score (which chooses) and test score (reported; None if no test),
    and what building and scoring it cost (None for a candidate not built in the model, such
    as the logit ensemble)."""

    val: Score
    test: Score | None
    cost: Cost | None = None

    def as_dict(self) -> dict[str, float | None]:
        """Flat scores and example counts for the JSON report (the cost is reported
        separately)."""
        test = self.test
        return {"val": self.val.value, "val_loss": self.val.loss,
                "val_examples": self.val.examples,
                "test": None if test is None else test.value,
                "test_loss": None if test is None else test.loss,
                "test_examples": None if test is None else test.examples}


@dataclass(frozen=True)
class Row:
    """One line of the report's table (the paper's Table: best individual, soups, ensemble)."""

    name: str
    scored: Scored
    ingredients: int
    detail: str = ""
    members: tuple[str, ...] = ()  # the ingredients mixed in it (greedy soup, best subset)
    in_sample: bool = False  # its val score is on the split it was trained on


@dataclass
class SoupResult:
    """The outcome of a soup method."""

    rows: list[Row]
    weights: dict[int, Any] | None = None  # ingredient index -> weight (a float or filter list)
    chosen: str = ""  # the table row whose model is written
    details: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, list[tuple[float, float, float | None]]] = field(default_factory=dict)


@dataclass
class SoupContext:
    """Everything a soup method needs; built by the runner."""

    method: str
    ingredients: Ingredients
    evaluator: Evaluator
    params: SoupParams
    staging: Path
    budget: int
    progress: bool = True
    first: int = 0  # index of the first fine-tuned ingredient (1 when 0 is wise_ft's base)
    _individual: list[Scored] | None = None
    _logits: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def val(self) -> str:
        return self.evaluator.cfg.val_split

    @property
    def test(self) -> str | None:
        return self.evaluator.test_split

    @property
    def members(self) -> list[int]:
        """Indices of the fine-tuned ingredients (every model, less wise_ft's base)."""
        return list(range(self.first, self.ingredients.count))

    def name(self, k: int) -> str:
        """The recipe's reference of ingredient ``k``."""
        return self.ingredients.refs[k]

    def score_loaded(self, label: str, test: bool = True) -> Scored:
        """Score whatever is loaded in the live model, on val (and test)."""
        ev, model = self.evaluator, self.ingredients.model
        val = ev.score(model, self.val, label)
        tst = ev.score(model, self.test, label) if test and self.test else None
        return Scored(val, tst)

    def score_mix(self, weights: dict[int, float], label: str, test: bool = True,
                  running: RunningSum | None = None, sum_weight: float = 0.0) -> Scored:
        """Load a mixture of ingredients (and the running sum) and score it, timing both."""
        watch = Stopwatch()
        self.ingredients.mix(weights, running, sum_weight)
        build = watch.lap()
        scored = self.score_loaded(label, test)
        return replace(scored, cost=Cost(build, watch.lap()))

    def individuals(self) -> list[Scored]:
        """Each fine-tuned ingredient's scores, computed once (with logits when available)."""
        if self._individual is None:
            out = []
            for k in self.members:
                watch = Stopwatch()
                self.ingredients.mix({k: 1.0})
                build = watch.lap()
                label = f"ingredient {k - self.first + 1}/{len(self.members)}"
                if self.evaluator.has_logits:
                    self._logits[k] = {s: self.evaluator.logits(self.ingredients.model, s, label)
                                       for s in (self.val, self.test) if s}
                    scored = Scored(*(self.evaluator.score_logits(self._logits[k][s], s)
                                      if s else None for s in (self.val, self.test)))
                else:
                    scored = self.score_loaded(label)
                out.append(replace(scored, cost=Cost(build, watch.lap())))
            self._individual = out
        return self._individual

    def logits(self, k: int, split: str) -> torch.Tensor:
        """Ingredient ``k``'s logits on ``split`` (after :meth:`individuals`)."""
        self.individuals()
        return self._logits[k][split]

    def ranked(self) -> list[int]:
        """Fine-tuned ingredients, best val score first (ties: the recipe's order)."""
        scores = self.individuals()
        idx = list(range(len(scores)))
        idx.sort(key=lambda i: (self.evaluator.best_key(scores[i].val.value), i))
        return [self.first + i for i in idx]

    def bar(self, items: list[Any], desc: str) -> Iterable[Any]:
        """``items`` with a progress bar (unless quiet)."""
        if not self.progress or len(items) < 2:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, leave=False)

    def running_sum(self) -> RunningSum:
        """An empty running sum over the merged tensors, in memory or on disk by the budget."""
        shapes = {t.name: t.shape for t in self.ingredients.tensors}
        return RunningSum(shapes, self.budget, self.staging)

    def individual_rows(self) -> list[Row]:
        """The best and second-best single models (by val), as table rows."""
        scores = self.individuals()
        rows = []
        for label, k in zip(("best individual", "second best individual"), self.ranked(),
                            strict=False):
            rows.append(Row(label, scores[k - self.first], 1, self.name(k)))
        return rows

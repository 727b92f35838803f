"""The model-wide trim's plan-time rules: which tensors rank over the whole model, and each
model's one density (and gamma).

``model_wide_trim: true`` ranks each model's whole task vector at once, so a model's density
must not vary by tensor; :func:`model_trims` finds that at plan time and names the recipe
field. The ranking itself is :mod:`mergekit_like.execute.global_trim`'s pre-pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mergekit_like.errors import Loc, PlanError, Problem
from mergekit_like.methods import REGISTRY
from mergekit_like.plan.tensors import COPY, Plan, PlannedTensor


@dataclass(frozen=True)
class ModelTrim:
    """One model's trim, the same for every tensor it is ranked over."""

    kind: Literal["magnitude", "outliers"]
    density: float
    gamma: float = 0.0

    def ranks(self, n: int) -> tuple[int, int]:
        """1-based ranks from the largest of the (smallest, largest) kept magnitude.

        0 means no bound on that side: nothing is kept when the first is 0, nothing large
        dropped when the second is 0. Same counts as the per-tensor masks of
        :mod:`~mergekit_like.methods.sparsify`.

        >>> ModelTrim("outliers", 0.5, 0.1).ranks(20)
        (12, 3)
        """
        keep = int(self.density * n)
        if self.kind == "magnitude":
            return keep, 0
        n_top = int(self.gamma * n)
        n_top += min(0, n - keep - n_top)
        return (n_top + keep if keep else 0), (n_top + 1 if n_top else 0)


def model_wide_tensors(plan: Plan) -> list[PlannedTensor]:
    """The planned tensors whose method trims over the whole model."""
    return [pt for pt in plan.tensors
            if pt.method != COPY and getattr(pt.params, "model_wide_trim", False)]


def uses_model_wide_trim(plan: Plan) -> bool:
    """Whether any planned tensor asks for ``model_wide_trim`` (then run the pre-pass)."""
    return bool(model_wide_tensors(plan))


def model_trims(plan: Plan) -> dict[int, ModelTrim]:
    """Each trimmed model's (plan.models index) trim; PlanError when one varies by tensor.

    Models kept whole (``density`` 1) or emptied (``density`` 0) need no ranking and are left
    out. The error names the recipe field holding the gradient or filter list.
    """
    seen: dict[int, dict[str, set[float]]] = {}
    kinds: dict[int, Literal["magnitude", "outliers"]] = {}
    for pt in model_wide_tensors(plan):
        kind = getattr(REGISTRY[pt.method].merge, "trim", None)
        if kind not in ("magnitude", "outliers"):
            continue
        for ref, mp in zip(pt.inputs, pt.model_params, strict=True):
            values = seen.setdefault(ref.model, {"density": set(), "gamma": set()})
            values["density"].add(float(getattr(mp, "density", 1.0)))
            if kind == "outliers":
                values["gamma"].add(float(getattr(mp, "gamma", 0.0)))
            kinds[ref.model] = kind
    problems: dict[Loc, Problem] = {}
    out: dict[int, ModelTrim] = {}
    for model, values in seen.items():
        for key, got in values.items():
            if len(got) > 1:
                ref = plan.models[model].ref
                loc = _field_locs(plan, ref, key)[0]
                problems.setdefault(loc, plan.recipe.problem(
                    loc, f"model_wide_trim ranks each model's task vector as a whole, so {key} "
                    f"must be one number per model; model {ref!r} gets {key} from {min(got):g} "
                    f"to {max(got):g} (use a single number)"))
        if len(values["density"]) == 1:
            density = next(iter(values["density"]))
            gamma = next(iter(values["gamma"]), 0.0)
            if 0.0 < density < 1.0:
                out[model] = ModelTrim(kinds[model], density, gamma)
    if problems:
        raise PlanError(list(problems.values()))
    return out


def _field_locs(plan: Plan, ref: str, key: str) -> list[Loc]:
    """Where ``key`` is set for model ``ref``: gradients and filter lists first."""
    recipe = plan.recipe.recipe
    levels: list[tuple[Loc, dict]] = [
        (("models", i, "parameters"), m.parameters)
        for i, m in enumerate(recipe.models or []) if m.model == ref]
    groups: list[tuple[Loc, list]] = [(("slices",), recipe.slices or [])]
    for name, module in (recipe.modules or {}).items():
        levels += [(("modules", name, "models", i, "parameters"), m.parameters)
                   for i, m in enumerate(module.models or []) if m.model == ref]
        groups.append((("modules", name, "slices"), module.slices or []))
        levels.append((("modules", name, "parameters"), module.parameters))
    for where, slices in groups:
        for s, sl in enumerate(slices):
            mine = [(k, src) for k, src in enumerate(sl.sources) if src.model == ref]
            levels += [((*where, s, "sources", k, "parameters"), src.parameters)
                       for k, src in mine]
            if mine:
                levels.append(((*where, s, "parameters"), sl.parameters))
    levels.append((("parameters",), recipe.parameters))
    present = [(loc, values[key]) for loc, values in levels if key in values]
    varying = [loc for loc, value in present if isinstance(value, tuple)]
    return [(*loc, key) for loc in varying or [loc for loc, _ in present] or [("parameters",)]]

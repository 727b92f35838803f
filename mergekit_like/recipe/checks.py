"""Checks of a recipe that need no model: they run before any download, and offline.

:func:`check_recipe` checks what the recipe alone decides, through the methods' typed
parameters: each method's required parameters and value ranges (DELLA's density +/- epsilon
inside (0, 1), slerp's ``t`` in [0, 1]), how many models the method takes, that the base
model is among each slice's sources, a model listed twice, and parameter names: a near miss
of a name the method reads (``desnity``) is an error, a name it never reads a warning.
Values are checked at every layer position the recipe fixes (each layer of a slice; the
first and last layer of a ``models:`` recipe), for tensors that match no filter entry.
:func:`check_parameter_names` is the part :func:`mergekit_like.plan.build.build_plan` runs too.

Example::

    result = check_recipe(load_recipe(Path("recipe.yaml")))
    result.raise_problems()          # RecipeError, one line per problem
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from mergekit_like.errors import Loc, Problem, RecipeError
from mergekit_like.methods import REGISTRY, MergeMethod, MethodParams
from mergekit_like.methods.spec import RECIPE_REQUIRED
from mergekit_like.recipe.loading import LoadedRecipe
from mergekit_like.recipe.parameters import ParamLevel, lookup

NO_FILTER = "\0"  # a tensor name that no filter entry matches
MODEL_CHECKS = (
    "tensor names, shapes and dtypes across the models",
    "layer counts and layer_range bounds",
    "parameter values at each layer",
    "vocabularies",
    "architectures",
)
"""What ``merge validate`` checks only with the models' headers at hand."""


@dataclass(frozen=True)
class CheckResult:
    """Problems (errors) and warnings found in a recipe."""

    problems: tuple[Problem, ...] = ()
    warnings: tuple[str, ...] = ()

    def raise_problems(self) -> None:
        if self.problems:
            raise RecipeError(self.problems)


def _method_keys(method: MergeMethod) -> list[str]:
    return [
        info.alias or name
        for model in (method.params, method.model_params)
        for name, info in model.model_fields.items()
    ]


def _parameter_levels(loaded: LoadedRecipe) -> Iterator[tuple[Loc, Mapping[str, Any]]]:
    recipe = loaded.recipe
    yield ("parameters",), recipe.parameters
    for i, m in enumerate(recipe.models or []):
        yield ("models", i, "parameters"), m.parameters
    for s, sl in enumerate(recipe.slices or []):
        yield ("slices", s, "parameters"), sl.parameters
        for k, src in enumerate(sl.sources):
            yield ("slices", s, "sources", k, "parameters"), src.parameters


def check_parameter_names(loaded: LoadedRecipe) -> CheckResult:
    """Misspelled parameter names (errors, with the name meant) and unused ones (warnings);
    a model listed twice among the inputs of one merge (a warning: mergekit refuses it, but
    merging a model twice is well defined)."""
    method = REGISTRY.get(loaded.recipe.merge_method)
    if method is None:  # a soup method: its ingredients are checked as a linear soup
        return CheckResult()
    known = _method_keys(method)
    problems, warnings = [], []
    for loc, values in _parameter_levels(loaded):
        for key in values:
            if key in known:
                continue
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
            if near:
                problems.append(
                    loaded.problem(
                        (*loc, key),
                        f"merge method {method.name!r} has "
                        f"no parameter {key!r}; did you mean {near[0]!r}?",
                    )
                )
            else:
                warnings.append(
                    str(
                        loaded.problem(
                            (*loc, key),
                            f"warning: merge method "
                            f"{method.name!r} does not use parameter {key!r}; it has no "
                            "effect",
                        )
                    )
                )
    return CheckResult(tuple(problems), tuple(warnings + _duplicates(loaded)))


def _duplicates(loaded: LoadedRecipe) -> list[str]:
    recipe = loaded.recipe
    groups: list[list[tuple[str, Loc]]] = []
    if recipe.models is not None:
        groups.append([(m.model, ("models", i, "model")) for i, m in enumerate(recipe.models)])
    for s, sl in enumerate(recipe.slices or []):
        groups.append(
            [(src.model, ("slices", s, "sources", k, "model")) for k, src in enumerate(sl.sources)]
        )
    out = []
    for group in groups:
        seen: dict[str, Loc] = {}
        for ref, loc in group:
            if ref in seen:
                message = (
                    f"warning: model {ref!r} is listed twice (also at {_fmt(seen[ref])}); "
                    "mergekit refuses this, here it is merged twice"
                )
                out.append(str(loaded.problem(loc, message)))
            seen.setdefault(ref, loc)
    return out


def _fmt(loc: Loc) -> str:
    from mergekit_like.errors import format_loc

    return format_loc(loc)


@dataclass(frozen=True)
class _Slice:
    loc: Loc
    sources: tuple[tuple[str, Loc, ParamLevel], ...]  # (model, loc, its parameters)
    params: ParamLevel
    positions: tuple[float, ...]  # the layer positions t the recipe fixes


def _slices(loaded: LoadedRecipe) -> list[_Slice]:
    recipe = loaded.recipe
    if recipe.models is not None:
        sources = tuple(
            (m.model, ("models", i), ParamLevel(m.parameters, ("models", i, "parameters")))
            for i, m in enumerate(recipe.models)
        )
        return [_Slice(("models",), sources, ParamLevel({}, ()), (0.0, 1.0))]
    out = []
    for s, sl in enumerate(recipe.slices or []):
        n = sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0]
        sources = tuple(
            (
                src.model,
                ("slices", s, "sources", k),
                ParamLevel(src.parameters, ("slices", s, "sources", k, "parameters")),
            )
            for k, src in enumerate(sl.sources)
        )
        out.append(
            _Slice(
                ("slices", s),
                sources,
                ParamLevel(sl.parameters, ("slices", s, "parameters")),
                tuple(j / (n - 1) if n > 1 else 0.0 for j in range(n)),
            )
        )
    return out


def check_recipe(loaded: LoadedRecipe) -> CheckResult:
    """Every check that needs no model (see the module docstring)."""
    names = check_parameter_names(loaded)
    method = REGISTRY.get(loaded.recipe.merge_method)
    if method is None:
        return names
    recipe = loaded.recipe
    problems = list(names.problems)
    if method.base == "required" and not recipe.base_model:
        problems.append(
            loaded.problem(("merge_method",), f"merge method {method.name!r} needs a base_model")
        )
    uses_base = recipe.base_model is not None and method.base != "unused"
    for sl in _slices(loaded):
        inputs = [src for src in sl.sources if not (uses_base and src[0] == recipe.base_model)]
        if uses_base and sl.loc[0] == "slices" and len(inputs) == len(sl.sources):
            problems.append(
                loaded.problem((*sl.loc, "sources"), "base_model is not among this slice's sources")
            )
        problems += _count_problem(loaded, method, sl.loc, len(inputs), uses_base)
        problems += _value_problems(loaded, method, sl, inputs)
    return CheckResult(tuple(dict.fromkeys(problems)), names.warnings)


def _count_problem(
    loaded: LoadedRecipe, method: MergeMethod, loc: Loc, n: int, uses_base: bool
) -> list[Problem]:
    low, high = method.min_models, method.max_models
    if low <= n and (high is None or n <= high):
        return []
    want = (
        f"exactly {low}"
        if high == low
        else f"at most {high}"
        if high is not None and n > high
        else f"at least {low}"
    )
    besides = " besides the base" if uses_base else ""
    return [
        loaded.problem(loc, f"merge method {method.name!r} takes {want} model(s){besides}, got {n}")
    ]


def _value_problems(
    loaded: LoadedRecipe, method: MergeMethod, sl: _Slice, inputs: list[tuple[str, Loc, ParamLevel]]
) -> list[Problem]:
    top = [sl.params, ParamLevel(loaded.recipe.parameters, ("parameters",))]
    problems: list[Problem] = []
    for t in sl.positions:
        problems += _validate(loaded, method.params, top, t, ("parameters",))
        for _, loc, level in inputs:
            problems += _validate(
                loaded, method.model_params, [level, *top], t, (*loc, "parameters")
            )
    return problems


def _validate(
    loaded: LoadedRecipe,
    model: type[MethodParams],
    levels: list[ParamLevel],
    t: float,
    missing_at: Loc,
) -> list[Problem]:
    values: dict[str, Any] = {}
    origin: dict[str, Loc] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if (found := lookup(key, levels, NO_FILTER, t)) is not None:
            values[key], origin[key] = found
    out = [
        loaded.problem((*missing_at, info.alias or name), "required parameter is missing")
        for name, info in model.model_fields.items()
        if (info.alias or name) not in values and info.json_schema_extra == RECIPE_REQUIRED
    ]
    try:
        model.model_validate(values)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            key = str(err["loc"][0]) if err["loc"] else ""
            if err["type"] == "missing":
                out.append(loaded.problem((*missing_at, key), "required parameter is missing"))
            else:
                out.append(loaded.problem(origin.get(key, (*missing_at, key)), err["msg"]))
    return out

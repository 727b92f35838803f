"""Before any weight moves: check a recipe, plan it from hub headers, then download.

``merge RECIPE OUT`` calls :func:`fetch_for_merge` first: the recipe-only checks of every
document (:mod:`mergekit_like.recipe.checks`), then, when hub models are missing from the
cache, a plan from their headers read over HTTP (so a wrong tensor name or shape is found in
seconds, not after the download), then the download of just the files the merge needs.
``merge validate`` is :func:`validate_recipe`: everything that can be checked with the
models that can be reached, and a line naming the checks left undone for the others.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mergekit_like.errors import InputError, Loc, PlanError
from mergekit_like.io.catalog import find_local
from mergekit_like.io.hub import HubAccess, HubUnreachable, fetch_models, offline_error, split_ref
from mergekit_like.io.hub_remote import HubModels
from mergekit_like.methods import REGISTRY
from mergekit_like.recipe.checks import MODEL_CHECKS, check_recipe
from mergekit_like.recipe.loading import LoadedRecipe


def model_locations(loaded: LoadedRecipe) -> dict[str, Loc]:
    """Each model reference of the recipe and the field that first names it."""
    recipe = loaded.recipe
    where: dict[str, Loc] = {}
    if recipe.base_model:
        where[recipe.base_model] = ("base_model",)
    for i, m in enumerate(recipe.models or []):
        where.setdefault(m.model, ("models", i, "model"))
    for s, sl in enumerate(recipe.slices or []):
        for k, src in enumerate(sl.sources):
            where.setdefault(src.model, ("slices", s, "sources", k, "model"))
    return where


def _open_all(loaded: LoadedRecipe, models: HubModels) -> dict[str, HubUnreachable]:
    """Open every model (remotely where needed); the unreachable ones, by reference.
    Other failures (a gated or missing repo) raise, located at the recipe field."""
    unreachable, problems = {}, []
    for ref, loc in model_locations(loaded).items():
        try:
            models(ref, loaded.path.parent, loaded.named_models)
        except HubUnreachable as exc:
            unreachable[ref] = exc
        except InputError as exc:
            problems += [loaded.problem(loc, p.message) for p in exc.problems]
    if problems:
        raise PlanError(problems)
    return unreachable


def validate_recipe(loaded: LoadedRecipe, access: HubAccess, allow_crimes: bool = False) -> int:
    """``merge validate``: recipe checks, then the plan from headers of every model reached."""
    from mergekit_like.plan.build import build_plan

    result = check_recipe(loaded)
    for warning in result.warnings:
        print(warning, file=sys.stderr)
    result.raise_problems()
    recipe = loaded.recipe
    models = HubModels(access)
    unreachable = _open_all(loaded, models)
    if unreachable:
        print(
            f"{loaded.path}: recipe checks passed ({recipe.merge_method}: required "
            "parameters, value ranges, model counts, base model, parameter names)"
        )
        print(
            f"not checked, as {len(unreachable)} model(s) are not reachable: "
            + "; ".join(MODEL_CHECKS)
        )
        for exc in unreachable.values():
            print(f"  {exc.problems[0].message}")
        return 0
    plan = build_plan(loaded, models=models, allow_crimes=allow_crimes)
    for warning in plan.warnings:
        print(warning, file=sys.stderr)
    print(
        f"{loaded.path}: ok ({recipe.merge_method}, {len(plan.models)} models, "
        f"{len(plan.tensors)} output tensors)"
    )
    return 0


def missing_hub_models(docs: Sequence[LoadedRecipe]) -> list[str]:
    """The hub ids the documents name that are not on this machine (adapters included)."""
    names = {d.recipe.name for d in docs if d.recipe.name}
    out = []
    for doc in docs:
        for ref in doc.recipe.referenced_models():
            for part in ref.split("+"):
                if (
                    part not in names
                    and split_ref(part)
                    and find_local(part, doc.path.parent) is None
                ):
                    out.append(part)
    return list(dict.fromkeys(out))


def fetch_for_merge(docs: Sequence[LoadedRecipe], access: HubAccess,
                    allow_crimes: bool = False) -> None:
    """Check every document, plan a single one from hub headers, then download what is
    missing (``access.offline``: a missing hub model is an error, nothing is contacted)."""
    from mergekit_like.plan.build import build_plan

    for doc in docs:
        check_recipe(doc).raise_problems()
    missing = missing_hub_models(docs)
    if not missing:
        return
    if access.offline:
        raise InputError([offline_error(ref, access).problems[0] for ref in missing])
    doc = docs[0]
    if len(docs) == 1 and doc.recipe.merge_method in REGISTRY:
        models = HubModels(access)
        if not _open_all(doc, models):  # every header read: plan before downloading
            build_plan(doc, models=models, allow_crimes=allow_crimes)
    fetch_models(missing, access)

"""Running a recipe that is judged on held-out data: a soup method, or any merge with an
``evaluation:`` block (its output is scored after it is written).

The soup story: plan the uniform linear soup (this checks the ingredients), load one live
model (once: every candidate's weights are copied into it), score candidates with the
evaluator, write the chosen mixture as an ordinary linear merge
(:func:`mergekit_like.execute.write.write_model`), then the report and plots beside it. All of it is
staged and published atomically.

Example::

    from mergekit_like.soups.runner import run_recipe
    report = run_recipe(Path("recipes/demo/digits-soups.yaml"), Path("out"), MergeOptions())
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from mergekit_like.errors import MergeError
from mergekit_like.execute.device import resolve_device
from mergekit_like.execute.output import check_output_path, staged_output
from mergekit_like.execute.setup import MergeOptions
from mergekit_like.execute.write import write_model
from mergekit_like.io.reader import TensorReader
from mergekit_like.io.writer import parse_size
from mergekit_like.plan.build import build_plan
from mergekit_like.recipe.loading import LoadedRecipe, load_recipe
from mergekit_like.recipe.models import Recipe
from mergekit_like.soups import SOUP_METHODS
from mergekit_like.soups.baselines import ensemble
from mergekit_like.soups.context import SoupContext, SoupResult
from mergekit_like.soups.evaluation import (
    Evaluator,
    build_evaluator,
    evaluation_threads,
    load_python,
)
from mergekit_like.soups.greedy import greedy_soup
from mergekit_like.soups.ingredients import Ingredients, load_model
from mergekit_like.soups.learned import learned_soup
from mergekit_like.soups.plots import write_plots
from mergekit_like.soups.report import card_section, console_table, report_data, write_report
from mergekit_like.soups.subset import subset_search
from mergekit_like.soups.wise_ft import wise_ft

RUNNERS: dict[str, Callable[[SoupContext], SoupResult]] = {
    "greedy_soup": greedy_soup, "learned_soup": learned_soup, "subset_search": subset_search,
    "wise_ft": wise_ft, "ensemble": ensemble,
}
EVAL_REPORT = "eval_report.json"


def derived_recipe(loaded: LoadedRecipe, members: Sequence[tuple[str, Any]],
                   name: str | None = None) -> LoadedRecipe:
    """A linear recipe over ``members`` (model reference, weight), keeping the recipe's
    dtype, tokenizer and name; relative paths still resolve from the recipe's folder."""
    r = loaded.recipe
    data = {"merge_method": "linear", "name": name or r.name,
            "models": [{"model": m, "parameters": {"weight": w}} for m, w in members],
            "dtype": r.dtype, "out_dtype": r.out_dtype, "tokenizer_source": r.tokenizer_source,
            "chat_template": r.chat_template}
    data = {k: v for k, v in data.items() if v is not None}
    return LoadedRecipe(Recipe.model_validate(data), loaded.path, data)


def run_recipe(path: Path, out: Path, options: MergeOptions | None = None,
               overrides: Sequence[str] = (), allow_code: bool = False) -> dict[str, Any]:
    """Load a recipe file and run it with :func:`run_loaded`."""
    return run_loaded(load_recipe(path, overrides), out, options or MergeOptions(), allow_code)


def run_loaded(loaded: LoadedRecipe, out: Path, options: MergeOptions,
               allow_code: bool = False) -> dict[str, Any]:
    """Run a soup recipe, or a plain merge and then its evaluation; returns the report data."""
    recipe = loaded.recipe
    if recipe.evaluation and recipe.evaluation.python and not allow_code:
        load_python(recipe.evaluation.python, allow_code, loaded.path.parent)  # raises
    if recipe.merge_method in SOUP_METHODS:
        return run_soup(loaded, out, options, allow_code)
    plan = build_plan(loaded, allow_crimes=options.allow_crimes)
    for warning in plan.warnings:
        print(warning, file=sys.stderr)
    if recipe.evaluation is None:
        write_model(plan, out, options)
        return {}
    # scored in the staging folder: OUT is published only once the evaluation succeeded
    write_model(plan, out, options, partial(_evaluate_staged, loaded, options, allow_code))
    return json.loads((out / EVAL_REPORT).read_text())


def _evaluate_staged(loaded: LoadedRecipe, options: MergeOptions, allow_code: bool,
                     folder: Path) -> None:
    evaluate_output(loaded, folder, options, allow_code)


def evaluate_output(loaded: LoadedRecipe, out: Path, options: MergeOptions,
                    allow_code: bool) -> dict[str, Any]:
    """Score a written merge on val and test; writes OUT/eval_report.json."""
    cfg = loaded.recipe.evaluation
    assert cfg is not None
    device = resolve_device(cfg.device or options.device)
    model = load_model(out, device)
    ev = build_evaluator(cfg, loaded.path.parent, model.main_input_name, out, device,
                         allow_code, progress=not options.quiet,
                         model_config=model.config.to_dict())
    data: dict[str, Any] = {"method": loaded.recipe.merge_method,
                            "higher_is_better": ev.higher_is_better}
    for key, split in (("val", ev.cfg.val_split), ("test", ev.test_split)):
        with evaluation_threads(cfg.threads):
            score = ev.score(model, split, "merged") if split else None
        data[key] = None if score is None else score.value
        data[f"{key}_loss"] = None if score is None else score.loss
        data[f"{key}_examples"] = None if score is None else score.examples
    (out / EVAL_REPORT).write_text(json.dumps(data, indent=2) + "\n")
    if not options.quiet:
        print(f"evaluation: val {data['val']}  test {data['test']}")
    return data


def uniform_recipe(loaded: LoadedRecipe) -> LoadedRecipe:
    """The uniform linear soup of a soup recipe's ingredients (wise_ft: base first)."""
    return _uniform(loaded)[0]


def _uniform(loaded: LoadedRecipe) -> tuple[LoadedRecipe, int]:
    recipe = loaded.recipe
    method = SOUP_METHODS[recipe.merge_method]
    for key in ("slices", "modules"):
        if getattr(recipe, key) is not None:
            raise MergeError(loaded.problem((key,), f"merge method {method.name!r} takes "
                                            f"models:, not {key}:"))
    refs = [m.model for m in recipe.models or []]
    first = 0
    if method.base == "required":
        if recipe.base_model is None:
            raise MergeError(loaded.problem(("merge_method",), f"merge method {method.name!r} "
                                            "needs a base_model (the zero-shot model)"))
        refs, first = [recipe.base_model, *refs], 1
    return derived_recipe(loaded, [(r, 1.0) for r in refs]), first


def run_soup(loaded: LoadedRecipe, out: Path, options: MergeOptions,
             allow_code: bool = False) -> dict[str, Any]:
    """Run a soup method, write its chosen model (if any), report and plots into ``out``."""
    recipe = loaded.recipe
    method = SOUP_METHODS[recipe.merge_method]
    params = method.params.model_validate(recipe.soup or {})
    cfg = recipe.evaluation
    assert cfg is not None
    try:
        budget = parse_size(params.memory_budget)
    except ValueError as exc:
        raise MergeError(loaded.problem(("soup", "memory_budget"), str(exc))) from None
    uniform, first = _uniform(loaded)
    plan = build_plan(uniform, allow_crimes=options.allow_crimes)
    check_output_path(plan, out)
    device = resolve_device(cfg.device or options.device)
    progress = not options.quiet
    with staged_output(out, options.force) as tmp:
        with TensorReader() as reader:
            model = load_model(plan.models[0].path, device)
            ev: Evaluator = build_evaluator(cfg, loaded.path.parent, model.main_input_name,
                                            plan.output.tokenizer_dir, device, allow_code,
                                            progress, model_config=model.config.to_dict())
            ingredients = Ingredients(plan, reader, model, budget)
            ctx = SoupContext(method.name, ingredients, ev, params, tmp, budget, progress,
                              first)
            with evaluation_threads(cfg.threads):
                result = RUNNERS[method.name](ctx)
        written = method.writes and result.weights is not None
        if written:
            _write_chosen(loaded, ctx, result, tmp, options)
        plots = write_plots(report_data(ctx, result, written), tmp) if params.plots else []
        data = write_report(ctx, result, tmp, written, plots)
        card = tmp / "README.md"
        if written and card.is_file():
            card.write_text(card.read_text() + card_section(data))
    if progress:
        print(console_table(data))
        what = f"{data['chosen']} model" if written else "no model (a baseline)"
        print(f"wrote {out}: {what}, soup_report.md, soup_report.json")
    return data


def _write_chosen(loaded: LoadedRecipe, ctx: SoupContext, result: SoupResult, folder: Path,
                  options: MergeOptions) -> None:
    assert result.weights is not None
    members = [(ctx.name(k), w) for k, w in sorted(result.weights.items()) if w != 0]
    name = loaded.recipe.name or f"{ctx.method}"
    plan = build_plan(derived_recipe(loaded, members, name), allow_crimes=options.allow_crimes)
    inner = folder / "model"
    write_model(plan, inner, MergeOptions(device=options.device,
                                          out_shard_bytes=options.out_shard_bytes,
                                          seed=options.seed, quiet=True,
                                          chunk_bytes=options.chunk_bytes,
                                          command=options.command,
                                          copy_tokenizer=options.copy_tokenizer,
                                          write_model_card=options.write_model_card))
    for item in inner.iterdir():
        item.rename(folder / item.name)
    inner.rmdir()

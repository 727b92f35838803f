"""Running a data-driven recipe (``fisher``, ``regmean``, ``adamerging``) into OUT.

The story: plan the uniform linear merge of the ingredients (this checks them, and gives
every output tensor's name, shape and dtype), load one live model, take the examples from
the ``evaluation:`` block's val split, let the method yield merged tensors one at a time,
write each into the pre-laid-out shards (and into the live model), then score the merged
model on val and test and write ``datamerge_report.json`` / ``.md`` beside it. All of it
is staged and published atomically.

Example::

    from mergekit_like.datamerge.runner import run_datamerge
    report = run_datamerge(load_recipe(Path("recipe.yaml")), Path("out"), MergeOptions())
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from mergekit_like.datamerge.cache import StatsCache
from mergekit_like.datamerge.merges import MERGES, MergeContext
from mergekit_like.datamerge.report import write_report
from mergekit_like.datamerge.statistics import Examples
from mergekit_like.errors import MergeError
from mergekit_like.execute.device import resolve_device
from mergekit_like.execute.output import check_output_path, staged_output, write_metadata
from mergekit_like.execute.setup import MergeOptions
from mergekit_like.io.reader import TensorReader, torch_dtype
from mergekit_like.io.writer import ShardWriter, layout_shards
from mergekit_like.plan.build import COPY, Plan, build_plan
from mergekit_like.recipe.datamerge import DATAMERGE_METHODS
from mergekit_like.recipe.loading import LoadedRecipe
from mergekit_like.soups.evaluation import Evaluator, build_evaluator
from mergekit_like.soups.ingredients import Ingredients, load_model
from mergekit_like.soups.runner import derived_recipe


def ingredient_recipe(loaded: LoadedRecipe) -> LoadedRecipe:
    """The uniform linear merge over the method's ingredients (adamerging: base first); it
    checks the ingredients and plans the output (``merge validate`` / ``plan`` use it)."""
    recipe = loaded.recipe
    method = DATAMERGE_METHODS[recipe.merge_method]
    for key in ("slices", "modules"):
        if getattr(recipe, key) is not None:
            raise MergeError(
                loaded.problem((key,), f"merge method {method.name!r} takes models:, not {key}:")
            )
    refs = [m.model for m in recipe.models or []]
    if method.base == "required":
        if recipe.base_model is None:
            raise MergeError(
                loaded.problem(
                    ("merge_method",),
                    f"merge method {method.name!r} "
                    "needs a base_model (task vectors are taken from it)",
                )
            )
        refs = [recipe.base_model, *refs]
    return derived_recipe(loaded, [(r, 1.0) for r in refs])


def model_scales(loaded: LoadedRecipe) -> list[float]:
    """``models[i].parameters.weight`` of each model (default 1): a positive number."""
    scales = []
    for i, m in enumerate(loaded.recipe.models or []):
        w = m.parameters.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, float | int) or w <= 0:
            raise MergeError(
                loaded.problem(
                    ("models", i, "parameters", "weight"),
                    f"{loaded.recipe.merge_method} takes one positive number per model, got {w!r}",
                )
            )
        scales.append(float(w))
    return scales


def _examples(ev: Evaluator, params: Any) -> Examples:
    split = ev.splits[ev.cfg.val_split]
    n = min(params.num_examples, len(split))
    inputs = {k: v[:n] for k, v in split.inputs.items()}
    labels = None if split.labels is None else split.labels[:n]
    if ev.device != "cpu":
        inputs = {k: v.to(ev.device) for k, v in inputs.items()}
        labels = None if labels is None else labels.to(ev.device)
    task = ev.cfg.task
    assert task is not None
    return Examples(inputs, labels, task, params.batch_size or ev.cfg.batch_size)


def run_datamerge(loaded: LoadedRecipe, out: Path, options: MergeOptions) -> dict[str, Any]:
    """Run a data-driven recipe into ``out``; returns the report's data."""
    recipe = loaded.recipe
    method = DATAMERGE_METHODS[recipe.merge_method]
    params = method.params.model_validate(recipe.datamerge or {})
    if method.base == "unused" and recipe.base_model is not None:
        warning = f"warning: merge method {method.name!r} does not use base_model"
        print(loaded.problem(("base_model",), warning), file=sys.stderr)
    scales = model_scales(loaded)
    plan = build_plan(ingredient_recipe(loaded), allow_crimes=options.allow_crimes)
    check_output_path(plan, out)
    cfg = recipe.evaluation
    assert cfg is not None
    device = resolve_device(cfg.device or options.device)
    progress = not options.quiet
    with staged_output(out, options.force) as tmp, TensorReader() as reader:
        model = load_model(plan.models[0].path, device)
        ev = build_evaluator(
            cfg,
            loaded.path.parent,
            model.main_input_name,
            plan.output.tokenizer_dir,
            device,
            False,
            progress,
        )
        ing = Ingredients(plan, reader, model)
        ctx = MergeContext(
            ing,
            _examples(ev, params),
            params,
            StatsCache.user(params.cache, tmp),
            scales,
            _bar(f"{method.name}") if progress else None,
        )
        start = time.perf_counter()
        _write_tensors(method.name, plan, ctx, tmp, reader, options)
        ctx.cache.discard()
        merge_s = time.perf_counter() - start
        write_metadata(
            dataclasses.replace(plan, recipe=loaded),
            tmp,
            seed=options.seed,
            command=options.command,
            copy_tokenizer=options.copy_tokenizer,
            model_card_file=options.write_model_card,
        )
        scores = _scores(ev, model)
        data = write_report(tmp, method.name, params, ctx, scores, merge_s, loaded)
    if progress:
        val, test = scores.get("val", {}), scores.get("test", {})
        print(
            f"{method.name}: val {val.get('score')} (loss {val.get('loss')}), "
            f"test {test.get('score')} (loss {test.get('loss')}); wrote {out}"
        )
    return data


def _scores(ev: Evaluator, model: Any) -> dict[str, Any]:
    """The merged model's score, loss and example count on val and test."""
    scores = {}
    for key, split in (("val", ev.cfg.val_split), ("test", ev.test_split)):
        if split:
            s = ev.score(model, split, "merged")
            scores[key] = {"score": s.value, "loss": s.loss, "examples": len(ev.splits[split])}
    return scores


def _bar(desc: str) -> Any:
    def bar(items: list[Any]) -> Any:
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, leave=False)

    return bar


def _write_tensors(
    method: str,
    plan: Plan,
    ctx: MergeContext,
    folder: Path,
    reader: TensorReader,
    options: MergeOptions,
) -> None:
    """Write every output tensor: copies as they are, merged ones as the method yields them
    (each also loaded into the live model, rounded to the output dtype)."""
    import torch

    ing = ctx.ingredients
    layout = layout_shards(
        [(t.name, t.dtype, t.shape) for t in plan.tensors], options.out_shard_bytes
    )
    writer = ShardWriter(folder, layout)
    try:
        for t in plan.tensors:
            if t.method == COPY:
                ref = t.inputs[0]
                writer.write(
                    t.name, reader.read(plan.models[ref.model].tensors[ref.name], ref.name)
                )
        merged = MERGES[method](ctx)
        for i, tensor in merged:  # the method's own code runs here: no no_grad around it
            t = ing.tensors[i]
            value = tensor.detach().to(torch_dtype(t.dtype))
            writer.write(t.name, value)
            with torch.no_grad():
                ing.targets[t.name].copy_(value.float())
        writer.finish()
    finally:
        writer.close()

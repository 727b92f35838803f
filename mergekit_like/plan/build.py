"""The plan: every output tensor, its inputs, method and resolved parameters, from headers only.

``build_plan(loaded)`` reads the ingredients' safetensors headers (never their data) and
returns a frozen :class:`Plan`. Every user error that can be found without reading tensor
data is raised here: missing models or tensors, shapes that differ, layer ranges outside a
model, parameters of the wrong type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mergekit_like.errors import Loc, PlanError, Problem
from mergekit_like.io.catalog import ModelCatalog, open_model
from mergekit_like.io.safetensors_header import FLOAT_DTYPES, RECIPE_DTYPES, promote_dtypes
from mergekit_like.methods import REGISTRY, MergeMethod, MethodParams
from mergekit_like.plan.architectures import check_ingredients
from mergekit_like.plan.layers import LayerLayout, layer_layout
from mergekit_like.plan.output_spec import output_spec
from mergekit_like.plan.sources import (
    ModelOpener,
    ModuleSlices,
    Source,
    SourceSlice,
    load_models,
    normalise_modules,
)
from mergekit_like.plan.tensors import COPY, Plan, PlannedTensor, TensorRef
from mergekit_like.plan.trims import model_trims
from mergekit_like.plan.vocab import VocabPlan, plan_vocab, vocab_rows
from mergekit_like.recipe.checks import check_parameter_names
from mergekit_like.recipe.loading import LoadedRecipe
from mergekit_like.recipe.models import Recipe
from mergekit_like.recipe.parameters import ParamLevel, lookup


def build_plan(loaded: LoadedRecipe, models: ModelOpener = open_model,
               allow_crimes: bool = False) -> Plan:
    """Plan a validated recipe against its ingredients' headers.

    ``models`` opens each model reference (default: local folders and the hub cache;
    :class:`mergekit_like.io.hub_remote.HubModels` reads hub headers over HTTP instead).
    ``allow_crimes`` (mergekit's ``--allow-crimes``): merge ingredients whose architectures
    differ instead of refusing them.
    """
    recipe = loaded.recipe
    method = REGISTRY[recipe.merge_method]
    check_parameter_names(loaded).raise_problems()
    catalogs, index_of = load_models(loaded, models)
    check_ingredients(loaded, catalogs, allow_crimes)
    layouts = {i: layer_layout(c.tensors, c.config) for i, c in enumerate(catalogs)}
    base_idx = index_of[recipe.base_model] if recipe.base_model else None
    if method.base == "required" and base_idx is None:
        raise PlanError(loaded.problem(
            ("merge_method",), f"merge method {method.name!r} needs a base_model"))
    ref_model = base_idx if base_idx is not None else index_of[_first_model(recipe)]
    modules = normalise_modules(loaded, index_of, layouts, ref_model)
    vocab = plan_vocab(loaded, catalogs, index_of, ref_model, base_idx)
    builder = _Builder(loaded, method, catalogs, layouts, base_idx, vocab)
    tensors: list[PlannedTensor] = []
    claimed = {n for m in modules for n in m.loose or ()}
    for module in modules:
        tensors.extend(_module_tensors(builder, module, layouts[ref_model], claimed))
    if builder.problems:
        raise PlanError(list(dict.fromkeys(builder.problems)))
    spec = output_spec(loaded, catalogs, index_of, ref_model, modules, layouts, vocab)
    merged = {pt.compute for pt in tensors if pt.method != COPY}
    widest = promote_dtypes(merged)  # the plan's compute dtype: for sizing, and global trims
    compute = recipe.dtype or next(k for k, v in RECIPE_DTYPES.items() if v == widest)
    if len(merged) > 1 and any(getattr(pt.params, "model_wide_trim", False) for pt in tensors):
        tensors = [pt if pt.method == COPY else dataclasses.replace(
            pt, compute=RECIPE_DTYPES[compute]) for pt in tensors]  # ranked in one dtype
    plan = Plan(loaded, tuple(catalogs), tuple(tensors), compute, spec,
                tuple(builder.warnings()), vocab)
    model_trims(plan)  # model_wide_trim needs one density per model: a plan-time error
    return plan


def _first_model(recipe: Recipe) -> str:
    """The model whose config the output takes when there is no base model."""
    if recipe.modules is not None:
        module = next(iter(recipe.modules.values()))
        return module.models[0].model if module.models else \
            module.slices[0].sources[0].model  # type: ignore[index]
    if recipe.models is not None:
        return recipe.models[0].model
    return recipe.slices[0].sources[0].model  # type: ignore[index]


def _module_tensors(builder: _Builder, module: ModuleSlices, ref: LayerLayout,
                    claimed: set[str]) -> list[PlannedTensor]:
    """One stack's output tensors, with the tensors outside the layers that belong to it.

    mergekit's rule (``MergePlanner.plan_module`` and ``plan_slice`` in mergekit 0.1.5): the
    tensors before the first layer (embeddings) are merged from the first slice's models,
    with the first slice's parameters; those after the last layer (final norm, lm_head)
    from the last slice's models, paired with as many of them as the first slice has, with
    the last slice's parameters. A gradient is read at t = 0 at both ends, whatever the
    slices. Inside a slice of n layers, layer j is read at t = j / (n - 1), and the one layer
    of a one-layer slice at t = 1. A ``models:`` recipe is one slice per stack, so its
    gradients run over each stack's own depth.
    """
    slices = module.slices
    if module.loose is not None:  # a module without layers
        return [builder.tensor(n, n, None, slices[0], 0.0, None) for n in module.loose]
    mine = [n for n in ref.other if n not in claimed
            and (module.stack is None or ref.owner.get(n) == module.stack)]
    out = [builder.tensor(n, n, None, slices[0], 0.0, None) for n in mine if _is_input_side(n)]
    first, last = slices[0], slices[-1]
    out_layer = 0
    for sl in slices:
        src = sl.sources[0]
        index = sl.stacks.get(src.model)
        if index is None:  # a model without layers
            continue
        stack = builder.layouts[src.model].stacks[index]
        for j in range(sl.length):
            t = j / (sl.length - 1) if sl.length > 1 else 1.0
            for tail in stack.layers[src.start + j]:
                out_name = f"{stack.head}{out_layer}{tail}"
                out.append(builder.tensor(out_name, tail, j, sl, t, out_layer))
            out_layer += 1
    tail_slice = dataclasses.replace(last, sources=last.sources[: len(first.sources)])
    out += [builder.tensor(n, n, None, tail_slice, 0.0, None)
            for n in mine if not _is_input_side(n)]
    return out


class _Builder:
    """Builds planned tensors, collecting every problem rather than stopping at the first."""

    def __init__(self, loaded: LoadedRecipe, method: MergeMethod, catalogs: list[ModelCatalog],
                 layouts: Mapping[int, LayerLayout], base_idx: int | None,
                 vocab: VocabPlan | None) -> None:
        self.loaded = loaded
        self.method = method
        self.catalogs = catalogs
        self.layouts = layouts
        self.base_idx = base_idx
        self.vocab = vocab
        self.problems: list[Problem] = []
        self.used_keys: set[str] = set()
        self._cache: dict[tuple[type, tuple[Any, ...]], MethodParams] = {}

    def _name(self, model: int, key: str, layer: int | None,
              sl: SourceSlice | None = None) -> str | None:
        """The input name in ``model`` for a non-layer name or a layer tail at ``layer``."""
        cat = self.catalogs[model]
        if layer is None:
            if key in cat.tensors:
                return key
            return _tied_fallback(key, cat)
        assert sl is not None
        name = f"{self._head(model, sl)}{layer}{key}"
        return name if name in cat.tensors else None

    def _head(self, model: int, sl: SourceSlice) -> str:
        """The head of the slice's stack in ``model``."""
        stack = sl.stacks.get(model)
        return "?." if stack is None else self.layouts[model].stacks[stack].head

    def tensor(self, out_name: str, key: str, j: int | None, sl: SourceSlice, t: float,
               layer_offset: int | None) -> PlannedTensor:
        method = self.method
        uses_base = self.base_idx is not None and method.base != "unused"
        sources = [s for s in sl.sources if not (uses_base and s.model == self.base_idx)]
        if not uses_base or len(sources) == len(sl.sources):
            base_src = None
        else:
            base_src = next(s for s in sl.sources if s.model == self.base_idx)
        if uses_base and base_src is None:
            if "slices" in sl.loc and j is not None:
                self.problems.append(self.loaded.problem(
                    (*sl.loc, "sources"), "base_model is not among this slice's sources"))
            base_src = Source(self.base_idx, 0, 0, ("base_model",), ParamLevel({}, ("base_model",)))
        n = len(sources)
        if n < method.min_models or (method.max_models is not None and n > method.max_models):
            want = (f"exactly {method.min_models}" if method.max_models == method.min_models
                    else f"at most {method.max_models}" if method.max_models is not None
                    and n > method.max_models else f"at least {method.min_models}")
            besides = " besides the base" if uses_base else ""
            self.problems.append(self.loaded.problem(
                sl.loc, f"merge method {method.name!r} takes {want} model(s){besides}, got {n}"))
        refs: list[TensorRef] = []
        for src in [*sources, *([base_src] if base_src else [])]:
            layer = None if j is None else src.start + j
            name = self._name(src.model, key, layer, sl)
            if name is None:
                missing = key if j is None else f"{self._head(src.model, sl)}{layer}{key}"
                self.problems.append(self.loaded.problem(
                    src.loc, f"model {self.catalogs[src.model].ref!r} has no tensor "
                    f"{missing!r}"))
                refs.append(TensorRef(src.model, missing))
            else:
                refs.append(TensorRef(src.model, name))
        infos = [self.catalogs[r.model].tensors.get(r.name) for r in refs]
        known = [(r, i) for r, i in zip(refs, infos, strict=True) if i is not None]
        first = known[0][1] if known else None
        shape = first.shape if first else ()
        is_vocab = j is None and bool(known) and all(
            len(i.shape) == 2 and i.shape[0] == vocab_rows(self.catalogs[r.model].config)
            for r, i in known)
        vocab_sources = None
        if is_vocab and self.vocab is not None:
            shapes = {i.shape[1:] for _, i in known}
            vocab_sources = self._vocab_sources(key, refs, shape)
            shape = (self.vocab.size, *shape[1:])
        else:
            shapes = {i.shape for _, i in known}
        if len(shapes) > 1:
            detail = ", ".join(f"{self.catalogs[r.model].ref}: {list(i.shape)}" for r, i in known)
            hint = ("; the vocabularies differ: set tokenizer_source (union, base or a model) "
                    "to merge rows by token" if is_vocab else "")
            self.problems.append(self.loaded.problem(
                sl.loc, f"tensor {out_name!r} has different shapes across models "
                f"({detail}){hint}"))
        base_ref = refs.pop() if base_src else None
        kinds = {i.dtype in FLOAT_DTYPES for _, i in known}
        if len(kinds) > 1:
            detail = ", ".join(f"{self.catalogs[r.model].ref}: {i.dtype}" for r, i in known)
            self.problems.append(self.loaded.problem(
                sl.loc, f"tensor {out_name!r} is fp16/bf16/fp32/fp64 in some models and not in "
                f"others ({detail})"))
        elif first is not None and first.dtype.startswith("F8"):
            self.problems.append(self.loaded.problem(
                sl.loc, f"tensor {out_name!r} is stored as {first.dtype} (quantized), which "
                f"merge method {method.name!r} cannot merge; use a bf16/fp16/fp32 checkpoint"))
        elif first is not None and first.dtype not in FLOAT_DTYPES:  # integer buffers
            return PlannedTensor(out_name, shape, first.dtype, COPY, (refs[0],), None, (), None,
                                 layer_offset)
        recipe = self.loaded.recipe
        compute = (RECIPE_DTYPES[recipe.dtype] if recipe.dtype  # else mergekit's: promoted
                   else promote_dtypes(i.dtype for _, i in known))
        dtype = RECIPE_DTYPES[recipe.out_dtype] if recipe.out_dtype else compute
        levels_global = [sl.params, sl.module_params,
                         ParamLevel(recipe.parameters, ("parameters",))]
        params = self._resolve(method.params, levels_global, out_name, t)
        model_params = tuple(
            self._resolve(method.model_params, [s.params, *levels_global], out_name, t)
            for s in sources
        )
        return PlannedTensor(out_name, shape, dtype, method.name, tuple(refs), base_ref,
                             model_params, params, layer_offset, vocab_sources, compute)

    def _vocab_sources(self, key: str, refs: list[TensorRef],
                       shape: tuple[int, ...]) -> tuple[TensorRef, ...] | None:
        """Every model holding this embedding-like tensor, when rows must be mapped by token."""
        assert self.vocab is not None
        if shape[0] == self.vocab.size and all(self.vocab.is_identity(r.model) for r in refs):
            return None
        out = []
        for m, cat in enumerate(self.catalogs):
            name = self._name(m, key, None)
            info = cat.tensors.get(name) if name else None
            if info is not None and info.shape[1:] == shape[1:] and \
                    info.shape[0] == vocab_rows(cat.config):
                out.append(TensorRef(m, name))
        return tuple(out)

    def _resolve(self, model: type[MethodParams], levels: list[ParamLevel], tensor: str,
                 t: float) -> MethodParams:
        values: dict[str, Any] = {}
        origin: dict[str, Loc] = {}
        for field, info in model.model_fields.items():
            key = info.alias or field
            self.used_keys.add(key)
            found = lookup(key, levels, tensor, t)
            if found is not None:
                values[key], origin[key] = found
        cache_key = (model, tuple(sorted(values.items())))
        if cache_key in self._cache:
            return self._cache[cache_key]
        try:
            result = model.model_validate(values)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                key = str(err["loc"][0]) if err["loc"] else ""
                loc = origin.get(key, ("parameters", key))
                self.problems.append(self.loaded.problem(loc, err["msg"]))
            result = model.model_construct()
        self._cache[cache_key] = result
        return result

    def warnings(self) -> list[str]:
        """Parameters the recipe sets that the method never reads."""
        out = []
        recipe = self.loaded.recipe
        levels: list[tuple[Loc, Mapping[str, Any]]] = [(("parameters",), recipe.parameters)]
        levels += [(("models", i, "parameters"), m.parameters)
                   for i, m in enumerate(recipe.models or [])]
        groups = [(("slices",), recipe.slices or [])]
        for name, module in (recipe.modules or {}).items():
            levels.append((("modules", name, "parameters"), module.parameters))
            levels += [(("modules", name, "models", i, "parameters"), m.parameters)
                       for i, m in enumerate(module.models or [])]
            groups.append((("modules", name, "slices"), module.slices or []))
        for where, slices in groups:
            for s, sl in enumerate(slices):
                levels.append(((*where, s, "parameters"), sl.parameters))
                levels += [((*where, s, "sources", k, "parameters"), src.parameters)
                           for k, src in enumerate(sl.sources)]
        for loc, values in levels:
            for key in values:
                if key not in self.used_keys:
                    out.append(str(self.loaded.problem(
                        (*loc, key), f"warning: merge method {self.method.name!r} does not use "
                        f"parameter {key!r}; it has no effect")))
        return out


_INPUT_SIDE = ("embed", "wte", "wpe", "word_embeddings", "position", "shared.", "patch",
               "projector", "conv1.", "conv2.", "pre_layrnorm", "ln_pre")


def _is_input_side(name: str) -> bool:
    """Tensors before the layers (embeddings, a vision model's projector); the rest after."""
    return any(k in name for k in _INPUT_SIDE)


def _tied_fallback(name: str, cat: ModelCatalog) -> str | None:
    """An untied output head missing from a tied model: use its input embedding."""
    if not name.endswith("lm_head.weight") or not cat.config.get("tie_word_embeddings", True):
        return None
    for cand in cat.tensors:
        if cand.endswith(("embed_tokens.weight", "wte.weight", "word_embeddings.weight")):
            return cand
    return None


def plan_from_file(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> Plan:
    """Load, validate and plan a recipe file in one call."""
    from mergekit_like.recipe.loading import load_recipe

    return build_plan(load_recipe(path, overrides))

"""Normalising ``models:``, ``slices:`` and ``modules:`` into one form: modules of slices.

Each layer stack of the model (see :mod:`mergekit_like.plan.layers`) is a *module*; its output
layers are slices of equally long layer ranges. As in mergekit, a ``models:`` recipe is one
slice per module covering every layer of every model. ``slices:`` address the language
model's stack; every other stack is then taken whole, as one slice, from the first slice's
models (with their parameters), so a frankenmerge of two vision-language models keeps the
first model's vision tower. ``modules:`` give each stack its own models or slices and must
name every stack; mergekit's modules without layers (``multi_modal_projector``, ``shared``)
may be given too, with ``models:``. Layer counts and ranges are checked against the headers
here, before any tensor data is read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from mergekit_like.errors import InputError, Loc, PlanError, Problem
from mergekit_like.io.catalog import ModelCatalog, open_model
from mergekit_like.plan.layers import LayerLayout, loose_module, module_names
from mergekit_like.recipe.loading import LoadedRecipe
from mergekit_like.recipe.models import InputModel, OutputModule, OutputSlice
from mergekit_like.recipe.parameters import ParamLevel

_NO_PARAMS = ParamLevel({}, ())


@dataclass(frozen=True)
class Source:
    """Layers [start, end) of one model (index into the plan's models) and its parameters."""

    model: int
    start: int
    end: int
    loc: Loc
    params: ParamLevel


@dataclass(frozen=True)
class SourceSlice:
    """Sources merged layer by layer into ``length`` consecutive output layers."""

    sources: tuple[Source, ...]
    length: int
    loc: Loc
    params: ParamLevel
    module_params: ParamLevel = _NO_PARAMS  # the ``modules.NAME.parameters`` level
    stacks: Mapping[int, int] = field(default_factory=dict)  # model -> its stack index


@dataclass(frozen=True)
class ModuleSlices:
    """One output stack: its module name, the reference model's stack and its slices."""

    name: str
    stack: int | None  # index into the reference model's layout.stacks; None: it has none
    slices: tuple[SourceSlice, ...]
    loose: tuple[str, ...] | None = None  # a module without layers: the tensors it holds

    @property
    def num_layers(self) -> int:
        return sum(s.length for s in self.slices)


ModelOpener = Callable[[str, Path | None, Mapping[str, Path]], ModelCatalog]
"""Opens one model reference: ``open_model(ref, recipe_dir, named_models)``."""


def load_models(loaded: LoadedRecipe, models: ModelOpener = open_model
                ) -> tuple[list[ModelCatalog], dict[str, int]]:
    """Open every model the recipe names (headers only), each located where first named.

    ``models`` opens one reference: local folders and the hub cache by default, or hub
    headers over HTTP (:class:`mergekit_like.io.hub_remote.HubModels`).
    """
    recipe = loaded.recipe
    where: dict[str, Loc] = {}
    if recipe.base_model:
        where[recipe.base_model] = ("base_model",)
    for i, m in enumerate(recipe.models or []):
        where.setdefault(m.model, ("models", i, "model"))
    groups = [(("slices",), recipe.slices or [])]
    for name, module in (recipe.modules or {}).items():
        for i, m in enumerate(module.models or []):
            where.setdefault(m.model, ("modules", name, "models", i, "model"))
        groups.append((("modules", name, "slices"), module.slices or []))
    for at, slices in groups:
        for s, sl in enumerate(slices):
            for k, src in enumerate(sl.sources):
                where.setdefault(src.model, (*at, s, "sources", k, "model"))
    catalogs: list[ModelCatalog] = []
    index_of: dict[str, int] = {}
    problems = []
    for ref, loc in where.items():
        try:
            catalogs.append(models(ref, loaded.path.parent, loaded.named_models))
            index_of[ref] = len(catalogs) - 1
        except InputError as exc:
            problems.extend(loaded.problem(loc, p.message) for p in exc.problems)
    if problems:
        raise PlanError(problems)
    return catalogs, index_of


def normalise_modules(
    loaded: LoadedRecipe,
    index_of: Mapping[str, int],
    layouts: Mapping[int, LayerLayout],
    reference: int,
) -> list[ModuleSlices]:
    """The recipe's models, slices or modules as checked :class:`ModuleSlices`, stack order."""
    return _Normaliser(loaded, index_of, layouts, reference).run()


class _Normaliser:
    def __init__(
        self,
        loaded: LoadedRecipe,
        index_of: Mapping[str, int],
        layouts: Mapping[int, LayerLayout],
        reference: int,
    ) -> None:
        self.loaded = loaded
        self.index_of = index_of
        self.layouts = layouts
        self.ref = reference
        self.names = module_names(layouts[reference])[0]
        self.problems: list[Problem] = []

    def run(self) -> list[ModuleSlices]:
        recipe = self.loaded.recipe
        if recipe.modules is not None:
            out = self._modules()
        elif not self.names:  # no layers at all: one module for the loose tensors
            out = [
                self._models_module(None, recipe.models, ("models",), _NO_PARAMS)
                if recipe.models is not None
                else self._slices_module(None, recipe.slices or [], ("slices",), _NO_PARAMS)
            ]
        elif recipe.models is not None:
            out = [
                self._models_module(n, recipe.models, ("models",), _NO_PARAMS) for n in self.names
            ]
        else:
            out = self._slices_on_main(recipe.slices or [])
        if self.problems:
            raise PlanError(self.problems)
        return out

    def _slices_on_main(self, slices: Sequence[OutputSlice]) -> list[ModuleSlices]:
        """``slices:`` take the main stack; the other stacks come whole from the first slice."""
        main = self.layouts[self.ref].main
        if main is None:
            stacks = ", ".join(
                f"{n!r} ({s.head}0-{s.num_layers - 1})"
                for n, s in zip(self.names, self.layouts[self.ref].stacks, strict=True)
            )
            raise PlanError(
                self.loaded.problem(
                    ("slices",),
                    f"model {self._ref_name()!r} has several layer stacks ({stacks}) and none "
                    "is the language model's; say which each slice takes with "
                    "modules: {NAME: {slices: [...]}}",
                )
            )
        return [
            self._slices_module(n, slices, ("slices",), _NO_PARAMS)
            if i == main
            else self._whole_module(n, slices[0])
            for i, n in enumerate(self.names)
        ]

    def _ref_name(self) -> str:
        return next(r for r, i in self.index_of.items() if i == self.ref)

    def _stack(self, model: int, name: str | None, loc: Loc) -> int | None:
        """The stack index of module ``name`` in ``model``; a problem when it has none."""
        if name is None:
            return None
        layout = self.layouts[model]
        _, alias = module_names(layout)
        ref_stack = self.layouts[self.ref].stacks[self._ref_alias()[name]]
        found = alias.get(name)
        if found is None:  # the same stack under another name: match by head
            found = next((i for i, s in enumerate(layout.stacks) if s.head == ref_stack.head), None)
        if found is None:
            model_name = next(r for r, i in self.index_of.items() if i == model)
            self.problems.append(
                self.loaded.problem(
                    loc, f"model {model_name!r} has no layer stack for module {name!r}"
                )
            )
        return found

    def _ref_alias(self) -> dict[str, int]:
        return module_names(self.layouts[self.ref])[1]

    def _depth(self, model: int, stack: int | None) -> int:
        return 0 if stack is None else self.layouts[model].stacks[stack].num_layers

    def _where(self, name: str | None) -> str:
        return "" if name is None or len(self.names) < 2 else f" in module {name!r}"

    def _models_module(
        self, name: str | None, models: Sequence[InputModel], loc: Loc, module_params: ParamLevel
    ) -> ModuleSlices:
        recipe = self.loaded.recipe
        entries = [
            (m.model, (*loc, i, "model"), m.parameters, (*loc, i)) for i, m in enumerate(models)
        ]
        stacks: dict[int, int] = {}
        depth: dict[str, int] = {}
        for ref, where, _, _ in [
            *entries,
            *([(recipe.base_model, ("base_model",), {}, ())] if recipe.base_model else []),
        ]:
            idx = self.index_of[ref]
            st = self._stack(idx, name, where)
            if st is not None:
                stacks[idx] = st
            depth[ref] = self._depth(idx, st)
        first = models[0].model
        n = depth[first]
        for ref, where, _, _ in entries:
            if depth[ref] != n:
                self.problems.append(
                    self.loaded.problem(
                        where,
                        f"model {ref!r} has {depth[ref]} layers{self._where(name)} but "
                        f"{first!r} has {n}; use slices to combine different depths",
                    )
                )
        if recipe.base_model and depth[recipe.base_model] != n:
            self.problems.append(
                self.loaded.problem(
                    ("base_model",),
                    f"base model has {depth[recipe.base_model]} layers"
                    f"{self._where(name)}, the models have {n}",
                )
            )
        sources = tuple(
            Source(self.index_of[ref], 0, n, src_loc, ParamLevel(params, (*src_loc, "parameters")))
            for ref, _, params, src_loc in entries
        )
        sl = SourceSlice(sources, n, loc, _NO_PARAMS, module_params, MappingProxyType(stacks))
        return ModuleSlices(name or "default", self._ref_index(name), (sl,))

    def _ref_index(self, name: str | None) -> int | None:
        return None if name is None else self._ref_alias()[name]

    def _slices_module(
        self, name: str | None, slices: Sequence[OutputSlice], loc: Loc, module_params: ParamLevel
    ) -> ModuleSlices:
        recipe = self.loaded.recipe
        out = []
        for s, sl in enumerate(slices):
            sources = []
            stacks: dict[int, int] = {}
            if recipe.base_model:
                base = self.index_of[recipe.base_model]
                st = self._stack(base, name, ("base_model",))
                if st is not None:
                    stacks[base] = st
            for k, src in enumerate(sl.sources):
                src_loc = (*loc, s, "sources", k)
                idx = self.index_of[src.model]
                st = self._stack(idx, name, (*src_loc, "model"))
                if st is not None:
                    stacks[idx] = st
                start, end = src.layer_range
                have = self._depth(idx, st)
                if end > have and (st is not None or name is None):
                    self.problems.append(
                        self.loaded.problem(
                            (*src_loc, "layer_range"),
                            f"layer_range [{start}, {end}) is outside model {src.model!r}, "
                            f"which has {have} layers{self._where(name)} (end is exclusive)",
                        )
                    )
                sources.append(
                    Source(
                        idx,
                        start,
                        end,
                        src_loc,
                        ParamLevel(src.parameters, (*src_loc, "parameters")),
                    )
                )
            length = sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0]
            out.append(
                SourceSlice(
                    tuple(sources),
                    length,
                    (*loc, s),
                    ParamLevel(sl.parameters, (*loc, s, "parameters")),
                    module_params,
                    MappingProxyType(stacks),
                )
            )
        return ModuleSlices(name or "default", self._ref_index(name), tuple(out))

    def _whole_module(self, name: str, first: OutputSlice) -> ModuleSlices:
        """A stack that ``slices:`` leave alone: whole, from the first slice's models."""
        models = [InputModel(model=src.model, parameters=src.parameters) for src in first.sources]
        module = self._models_module(name, models, ("slices", 0, "sources"), _NO_PARAMS)
        sl = module.slices[0]
        fixed = SourceSlice(
            sl.sources,
            sl.length,
            ("slices", 0),
            ParamLevel(first.parameters, ("slices", 0, "parameters")),
            _NO_PARAMS,
            sl.stacks,
        )
        return ModuleSlices(module.name, module.stack, (fixed,))

    def _modules(self) -> list[ModuleSlices]:
        recipe = self.loaded.recipe
        assert recipe.modules is not None
        alias = self._ref_alias()
        known = ", ".join(repr(n) for n in self.names) or "none"
        by_stack: dict[int, ModuleSlices] = {}
        out_loose: list[ModuleSlices] = []
        for name, module in recipe.modules.items():
            loc: Loc = ("modules", name)
            if name not in alias and loose_module(self.layouts[self.ref], name):
                got = self._loose_module(name, module, loc)
                if got is not None:
                    out_loose.append(got)
                continue
            if name not in alias:
                self.problems.append(
                    self.loaded.problem(
                        loc,
                        f"model {self._ref_name()!r} has no module {name!r}; its modules "
                        f"(layer stacks): {known}",
                    )
                )
                continue
            level = ParamLevel(module.parameters, (*loc, "parameters"))
            if module.models is not None:
                got = self._models_module(name, module.models, (*loc, "models"), level)
            else:
                got = self._slices_module(name, module.slices or [], (*loc, "slices"), level)
            if alias[name] in by_stack:
                self.problems.append(
                    self.loaded.problem(
                        loc,
                        f"module {name!r} is given twice (also as {by_stack[alias[name]].name!r})",
                    )
                )
            by_stack[alias[name]] = got
        missing = [n for i, n in enumerate(self.names) if i not in by_stack]
        if missing and not self.problems:
            self.problems.append(
                self.loaded.problem(
                    ("modules",),
                    f"model {self._ref_name()!r} has modules {known}; give each of "
                    f"them (missing: {', '.join(repr(n) for n in missing)}), or use slices: for "
                    "the language model's layers alone",
                )
            )
        return [*out_loose, *(by_stack[i] for i in sorted(by_stack))]

    def _loose_module(self, name: str, module: OutputModule, loc: Loc) -> ModuleSlices | None:
        """A module without layers (a projector, a shared embedding): from ``models:``."""
        if module.models is None:
            self.problems.append(
                self.loaded.problem(
                    (*loc, "slices"), f"module {name!r} has no layers; give it models:, not slices:"
                )
            )
            return None
        level = ParamLevel(module.parameters, (*loc, "parameters"))
        sources = tuple(
            Source(
                self.index_of[m.model],
                0,
                0,
                (*loc, "models", i),
                ParamLevel(m.parameters, (*loc, "models", i, "parameters")),
            )
            for i, m in enumerate(module.models)
        )
        sl = SourceSlice(sources, 0, (*loc, "models"), _NO_PARAMS, level)
        return ModuleSlices(name, None, (sl,), loose_module(self.layouts[self.ref], name))

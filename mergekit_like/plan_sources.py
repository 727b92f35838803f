"""Normalising ``models:`` and ``slices:`` into one form: slices of equally long layer ranges.

A ``models:`` recipe is one slice covering every layer of every model. Layer counts and
ranges are checked against the headers here, before any tensor data is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mergekit_like.errors import Loc, PlanError
from mergekit_like.layers import LayerLayout
from mergekit_like.loader import LoadedRecipe
from mergekit_like.params import ParamLevel


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


def normalise_slices(
    loaded: LoadedRecipe, index_of: Mapping[str, int], layouts: Mapping[int, LayerLayout]
) -> list[SourceSlice]:
    """The recipe's models or slices as checked :class:`SourceSlice` values."""
    recipe = loaded.recipe
    problems = []
    out: list[SourceSlice] = []
    if recipe.models is not None:
        counts = {m.model: layouts[index_of[m.model]].num_layers for m in recipe.models}
        if recipe.base_model:
            counts[recipe.base_model] = layouts[index_of[recipe.base_model]].num_layers
        n = next(iter(counts.values()))
        for i, m in enumerate(recipe.models):
            if counts[m.model] != n:
                problems.append(loaded.problem(
                    ("models", i, "model"),
                    f"model {m.model!r} has {counts[m.model]} layers but "
                    f"{next(iter(counts))!r} has {n}; use slices to combine different depths"))
        if recipe.base_model and counts[recipe.base_model] != n:
            problems.append(loaded.problem(
                ("base_model",), f"base model has {counts[recipe.base_model]} layers, "
                f"the models have {n}"))
        sources = tuple(
            Source(index_of[m.model], 0, n, ("models", i),
                   ParamLevel(m.parameters, ("models", i, "parameters")))
            for i, m in enumerate(recipe.models)
        )
        out.append(SourceSlice(sources, n, ("models",), ParamLevel({}, ())))
    else:
        assert recipe.slices is not None
        for s, sl in enumerate(recipe.slices):
            sources = []
            for k, src in enumerate(sl.sources):
                idx = index_of[src.model]
                start, end = src.layer_range
                have = layouts[idx].num_layers
                if end > have:
                    problems.append(loaded.problem(
                        ("slices", s, "sources", k, "layer_range"),
                        f"layer_range [{start}, {end}) is outside model {src.model!r}, "
                        f"which has {have} layers (end is exclusive)"))
                sources.append(Source(idx, start, end, ("slices", s, "sources", k),
                                      ParamLevel(src.parameters,
                                                 ("slices", s, "sources", k, "parameters"))))
            length = sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0]
            out.append(SourceSlice(tuple(sources), length, ("slices", s),
                                   ParamLevel(sl.parameters, ("slices", s, "parameters"))))
    if problems:
        raise PlanError(problems)
    return out

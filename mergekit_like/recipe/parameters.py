"""Resolving a recipe's parameter values for one tensor.

A value may be a scalar, a gradient (numbers interpolated linearly over the layer position
``t`` in [0, 1]) or a filter list (first entry whose ``filter`` is a substring of the tensor
name wins; an entry without filter matches everything). Lookup goes from the most specific
level (the model's own parameters) to the least (the recipe's), first defined value wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mergekit_like.errors import Loc
from mergekit_like.recipe.models import FilterEntry, Parameters, ParamValue

Scalar = float | bool


@dataclass(frozen=True)
class ParamLevel:
    """One level of parameter lookup: the values and the recipe path they sit at."""

    values: Parameters
    loc: Loc  # path of the 'parameters' mapping, e.g. ('models', 1, 'parameters')


def interpolate(value: Scalar | tuple[float, ...], t: float) -> Scalar:
    """Evaluate a gradient at position ``t`` in [0, 1]; scalars are returned unchanged.

    >>> interpolate((0.0, 1.0, 0.0), 0.25)
    0.5
    """
    if not isinstance(value, tuple):
        return value
    if len(value) == 1:
        return value[0]
    pos = min(max(t, 0.0), 1.0) * (len(value) - 1)
    lo = min(int(math.floor(pos)), len(value) - 2)
    frac = pos - lo
    return value[lo] + (value[lo + 1] - value[lo]) * frac


def evaluate(value: ParamValue, tensor_name: str, t: float) -> Scalar | None:
    """The value of one parameter for one tensor, or None when no filter entry matches."""
    if isinstance(value, tuple) and value and isinstance(value[0], FilterEntry):
        for entry in value:
            assert isinstance(entry, FilterEntry)
            if entry.filter is None or entry.filter in tensor_name:
                return interpolate(entry.value, t)
        return None
    return interpolate(value, t)  # type: ignore[arg-type]


def lookup(
    key: str, levels: Sequence[ParamLevel], tensor_name: str, t: float
) -> tuple[Scalar, Loc] | None:
    """First defined value of ``key`` across ``levels``, with the path it came from."""
    for level in levels:
        if key in level.values:
            got = evaluate(level.values[key], tensor_name, t)
            if got is not None:
                return got, (*level.loc, key)
    return None

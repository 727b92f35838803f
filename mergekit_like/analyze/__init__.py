"""``merge analyze``: what the task vectors of a merge's ingredients look like before a
method is chosen: their norms, pairwise cosines and angles (the model soups paper's angle
analysis) and how often their signs conflict after TIES's trim (the TIES paper's analysis),
overall, per layer and per kind of tensor. Streams one tensor at a time.

Example::

    from mergekit_like.analyze import analyze_to_folder, models_from_args
    analyze_to_folder(models_from_args(["ft1", "ft2"], "base"), Path("out"))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mergekit_like.analyze.analysis import (
    DEFAULT_DENSITIES,
    AnalyzeModels,
    analyze,
    models_from_args,
    models_from_recipe,
)

__all__ = [
    "DEFAULT_DENSITIES",
    "AnalyzeModels",
    "analyze",
    "analyze_to_folder",
    "models_from_args",
    "models_from_recipe",
]


def analyze_to_folder(
    which: AnalyzeModels,
    out: Path | None,
    densities: Sequence[float] = DEFAULT_DENSITIES,
    progress: bool = True,
    force: bool = False,
    plots: bool = True,
) -> dict[str, Any]:
    """Analyse and write the report into ``out`` (staged, published whole); with ``out``
    None, nothing is written. Returns the report data."""
    from mergekit_like.analyze.report import write_analysis
    from mergekit_like.execute.staging import staged_output

    if out is not None and out.exists() and not force:
        from mergekit_like.errors import MergeError

        raise MergeError(f"{out}: already exists; pass --force to replace it")
    data = analyze(which, densities, progress, out)
    if out is None:
        return data
    with staged_output(out, force) as tmp:
        return write_analysis(data, tmp, plots)

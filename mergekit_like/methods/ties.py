"""TIES merging (Yadav et al., 2023): trim, elect sign, disjoint merge.

Each task vector keeps its ``density`` fraction of largest-magnitude entries; the sign of
each entry is elected by the summed weighted mass; only task vectors agreeing with the
elected sign are mixed (``normalize``, on by default: divided by the sum of their weights,
the paper's disjoint mean).

Trimming scope differs between mergekit and the paper:

- mergekit (default, ``model_wide_trim: false``): each tensor of a task vector keeps its own
  ``int(density * n)`` largest magnitudes (ties at the threshold broken by position).
- the paper (``model_wide_trim: true``): the whole task vector of a model, all of its tensors
  the merge covers, is ranked at once: one threshold per model, the ``int(density * N)``-th
  largest ``|x - base|`` over its ``N`` entries, found exactly by a streaming pre-pass before
  the merge (:mod:`mergekit_like.execute.global_trim`); every entry with ``|x - base| >= threshold``
  is kept. ``density`` must then be one number per model (no gradient or filter list), and
  ``rescale`` still keeps each tensor's L1 norm.
"""

from __future__ import annotations

from pydantic import Field

from mergekit_like.methods.spec import RECIPE_REQUIRED, MergeMethod, MethodParams
from mergekit_like.methods.task_arithmetic import (
    MagnitudeTrimParams,
    family_merge,
    rescaled_copies,
)


class TiesParams(MagnitudeTrimParams):
    normalize: bool = Field(True, description="disjoint mean: divide by the agreeing weights")


class TiesModelParams(MethodParams):
    weight: float = Field(1.0, json_schema_extra=RECIPE_REQUIRED,
                          description="scale of this model's task vector")
    density: float = Field(1.0, ge=0.0, le=1.0,
                           description="fraction of entries kept (largest magnitudes, per "
                           "tensor; per model with model_wide_trim)")


TIES = MergeMethod(
    name="ties",
    summary="TIES: trim task vectors by magnitude, elect signs, average the agreeing ones",
    **family_merge(trim="magnitude", consensus="sum"),
    params=TiesParams,
    model_params=TiesModelParams,
    base="required",
    held=rescaled_copies,
)

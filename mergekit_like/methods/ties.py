"""TIES merging (Yadav et al., 2023): trim, elect sign, disjoint merge.

Each task vector keeps its ``density`` fraction of largest-magnitude entries; the sign of
each entry is elected by the summed weighted mass; only task vectors agreeing with the
elected sign are mixed (``normalize``, on by default: divided by the sum of their weights,
the paper's disjoint mean).

Trimming is per tensor, as in mergekit (the paper ranks magnitudes over the whole model;
that needs a first pass over every tensor, which the streaming executor does not make).
"""

from __future__ import annotations

from pydantic import Field

from mergekit_like.methods.spec import MergeMethod, MethodParams
from mergekit_like.methods.task_arithmetic import TaskArithmeticFamily, TaskArithmeticParams


class TiesParams(TaskArithmeticParams):
    normalize: bool = Field(True, description="disjoint mean: divide by the agreeing weights")


class TiesModelParams(MethodParams):
    weight: float = Field(1.0, description="scale of this model's task vector")
    density: float = Field(1.0, ge=0.0, le=1.0,
                           description="fraction of entries kept (largest magnitudes, per tensor)")


TIES = MergeMethod(
    name="ties",
    summary="TIES: trim task vectors by magnitude, elect signs, average the agreeing ones",
    merge=TaskArithmeticFamily(trim="magnitude", consensus="sum"),
    params=TiesParams,
    model_params=TiesModelParams,
    base="required",
)

"""Model Breadcrumbs (Davari & Belilovsky, 2023): drop the outliers and the noise.

Each task vector loses its largest ``gamma`` fraction of entries (outliers) and its
smallest, so that a ``density`` fraction remains (per tensor, as mergekit's
``magnitude_outliers``). ``breadcrumbs`` then adds the task vectors; ``breadcrumbs_ties``
elects signs as TIES does first. Neither normalises nor rescales by default (mergekit).

One difference from mergekit: where ``int(gamma * n)`` is 0 (small tensors), mergekit's
mask empties the whole tensor; here nothing large is dropped and ``density`` still remain.
"""

from __future__ import annotations

from pydantic import Field

from mergekit_like.methods.spec import MergeMethod, MethodParams
from mergekit_like.methods.task_arithmetic import TaskArithmeticFamily, TaskArithmeticParams


class BreadcrumbsModelParams(MethodParams):
    weight: float = Field(1.0, description="scale of this model's task vector")
    density: float = Field(1.0, ge=0.0, le=1.0, description="fraction of entries kept")
    gamma: float = Field(0.01, ge=0.0, le=1.0,
                         description="fraction of largest-magnitude entries dropped")


BREADCRUMBS = MergeMethod(
    name="breadcrumbs",
    summary="Model Breadcrumbs: drop the largest and the smallest task-vector entries, add",
    merge=TaskArithmeticFamily(trim="outliers"),
    params=TaskArithmeticParams,
    model_params=BreadcrumbsModelParams,
    base="required",
)

BREADCRUMBS_TIES = MergeMethod(
    name="breadcrumbs_ties",
    summary="Model Breadcrumbs, then TIES sign election",
    merge=TaskArithmeticFamily(trim="outliers", consensus="sum"),
    params=TaskArithmeticParams,
    model_params=BreadcrumbsModelParams,
    base="required",
)

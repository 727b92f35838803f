"""Model Breadcrumbs (Davari & Belilovsky, 2023): drop the outliers and the noise.

Each task vector loses its largest ``gamma`` fraction of entries (outliers) and its
smallest, so that a ``density`` fraction remains (per tensor, as mergekit's
``magnitude_outliers``). ``breadcrumbs`` then adds the task vectors; ``breadcrumbs_ties``
elects signs as TIES does first. Neither normalises nor rescales by default (mergekit).

One difference from mergekit: where ``int(gamma * n)`` is 0 (small tensors), mergekit's
mask empties the whole tensor; here nothing large is dropped and ``density`` still remain.

``model_wide_trim: true`` ranks over each model's whole task vector (all the tensors the
merge covers, ``N`` entries) instead of each tensor, as TIES' paper does for its trim: the
``int(gamma * N)`` largest and the smallest entries of the model are dropped so that
``int(density * N)`` remain. The two bounds (the largest and the smallest kept magnitude)
are found exactly by a pre-pass (:mod:`mergekit_like.execute.global_trim`) and every entry with
``low <= |x - base| <= high`` is kept, ties at a bound included. ``density`` and ``gamma``
must then be one number per model.
"""

from __future__ import annotations

from pydantic import Field

from mergekit_like.methods.spec import RECIPE_REQUIRED, MergeMethod, MethodParams
from mergekit_like.methods.task_arithmetic import (
    MagnitudeTrimParams,
    family_merge,
    rescaled_copies,
)


class BreadcrumbsModelParams(MethodParams):
    weight: float = Field(1.0, json_schema_extra=RECIPE_REQUIRED,
                          description="scale of this model's task vector")
    density: float = Field(1.0, ge=0.0, le=1.0, description="fraction of entries kept")
    gamma: float = Field(0.01, ge=0.0, le=1.0,
                         description="fraction of largest-magnitude entries dropped")


BREADCRUMBS = MergeMethod(
    name="breadcrumbs",
    summary="Model Breadcrumbs: drop the largest and the smallest task-vector entries, add",
    **family_merge(trim="outliers"),
    params=MagnitudeTrimParams,
    model_params=BreadcrumbsModelParams,
    base="required",
    held=rescaled_copies,
)

BREADCRUMBS_TIES = MergeMethod(
    name="breadcrumbs_ties",
    summary="Model Breadcrumbs, then TIES sign election",
    **family_merge(trim="outliers", consensus="sum"),
    params=MagnitudeTrimParams,
    model_params=BreadcrumbsModelParams,
    base="required",
    held=rescaled_copies,
)

"""TIES merging (Yadav et al., 2023): trim, elect sign, disjoint merge.

Each task vector keeps its ``density`` fraction of largest-magnitude entries (per tensor,
as mergekit does); the sign of each entry is elected by the summed weighted mass; only
task vectors agreeing with the elected sign are averaged (``normalize``: divided by the
sum of their weights, the paper's disjoint mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.spec import MergeMethod, MethodParams, TensorContext
from mergekit_like.methods.task_arithmetic import generalized_task_arithmetic

if TYPE_CHECKING:
    import torch


class TiesParams(MethodParams):
    lambda_: float = Field(1.0, alias="lambda", description="scale of the merged task vector")
    normalize: bool = Field(True, description="disjoint mean: divide by the agreeing weights")
    int8_mask: bool = Field(False, description="accepted for mergekit compatibility; no effect")


class TiesModelParams(MethodParams):
    weight: float = Field(1.0, description="scale of this model's task vector")
    density: float = Field(1.0, ge=0.0, le=1.0, description="fraction of entries kept")


def ties_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[TiesModelParams],
    params: TiesParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """TIES: magnitude trim to ``density``, sign election by summed mass, disjoint mean."""
    assert base is not None
    return generalized_task_arithmetic(
        tensors,
        base,
        [p.weight for p in model_params],
        [p.density for p in model_params],
        lambda_=params.lambda_,
        normalize=params.normalize,
        consensus="sum",
    )


TIES = MergeMethod(
    name="ties",
    summary="TIES: trim task vectors by magnitude, elect signs, average the agreeing ones",
    merge=ties_merge,
    params=TiesParams,
    model_params=TiesModelParams,
    base="required",
)

"""SCE (Wan et al., 2024, FuseChat): Select, Calculate, Erase.

- Select: keep the ``select_topk`` fraction of positions where the task vectors vary most
  across models (population variance, over positions of non-zero variance); the others
  are zeroed in every task vector. ``select_topk: 1`` (mergekit's default) keeps all.
- Calculate: each model's weight is the mean square of its selected task vector,
  normalised so the weights sum to 1.
- Erase: the sign of each entry is elected by the plain sum of the task vectors; entries
  of the minority sign are dropped, and the rest averaged with the weights.

As mergekit's ``sce``: no per-model parameters (the weights come from the data).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.spec import MergeMethod, MethodParams, NoParams, TensorContext
from mergekit_like.methods.task_arithmetic import generalized_task_arithmetic

if TYPE_CHECKING:
    import torch


class SceParams(MethodParams):
    select_topk: float = Field(1.0, ge=0.0, le=1.0,
                               description="fraction of highest-variance positions kept")
    int8_mask: bool = Field(False, description="accepted for mergekit compatibility; no effect")


def sce_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[NoParams],
    params: SceParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """SCE: variance selection, energy weights, sign election, weighted disjoint mean."""
    if base is None:
        raise ValueError("sce needs a base_model")
    return generalized_task_arithmetic(
        tensors, base, "energy", select_topk=params.select_topk, normalize=True,
        consensus="sum_unweighted",
    )


SCE = MergeMethod(
    name="sce",
    summary="SCE: select high-variance entries, weight models by energy, erase minority signs",
    merge=sce_merge,
    params=SceParams,
    base="required",
)

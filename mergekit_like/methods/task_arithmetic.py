"""The task-arithmetic family: task vectors from a base, optionally trimmed and sign-elected.

One implementation serves ``task_arithmetic`` and ``ties`` (and later the DARE family):

    delta_i = x_i - base
    delta_i = sparsify(delta_i, density_i)             (ties: keep top-k by magnitude)
    d_i = w_i * delta_i
    mask_i = sign(d_i) == sign(sum_j d_j)               (ties only: elect the sign by mass)
    mixed = sum_i mask_i * d_i  [/ sum_i mask_i * w_i  if normalize]
    out = base + lambda * mixed

This follows mergekit's ``generalized_task_arithmetic``, so shared recipes give the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from mergekit_like.methods.sparsify import magnitude_mask
from mergekit_like.methods.spec import MergeMethod, MethodParams, TensorContext

if TYPE_CHECKING:
    import torch


def generalized_task_arithmetic(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor,
    weights: Sequence[float],
    densities: Sequence[float] | None,
    *,
    lambda_: float = 1.0,
    normalize: bool = False,
    consensus: Literal["sum", "count"] | None = None,
) -> torch.Tensor:
    """Merge task vectors ``x_i - base``; see the module docstring for the formula."""
    import torch

    mixed = torch.zeros_like(base)
    divisor = torch.zeros_like(base) if normalize else None
    deltas = []
    for i, (x, w) in enumerate(zip(tensors, weights, strict=True)):
        delta = x - base
        if densities is not None and densities[i] < 1.0:
            delta.mul_(magnitude_mask(delta, densities[i]))
        deltas.append(delta.mul_(w))
    if consensus is None:
        for w, d in zip(weights, deltas, strict=True):
            mixed.add_(d)
            if divisor is not None:
                divisor.add_(w)
    else:
        if consensus == "sum":
            total = torch.stack(deltas).sum(dim=0)
        else:
            total = torch.stack([d.sign() for d in deltas]).sum(dim=0)
        elected = torch.where(total >= 0, 1.0, -1.0).to(base.dtype)
        for w, d in zip(weights, deltas, strict=True):
            keep = d.sign() == elected
            mixed.add_(d * keep)
            if divisor is not None:
                divisor.add_(keep.to(base.dtype) * w)
    if divisor is not None:
        divisor[divisor.abs() < 1e-8] = 1.0
        mixed.div_(divisor)
    if lambda_ != 1.0:
        mixed.mul_(lambda_)
    return mixed.add_(base)


class TaskArithmeticParams(MethodParams):
    lambda_: float = Field(1.0, alias="lambda", description="scale of the summed task vectors")
    normalize: bool = Field(False, description="divide by the sum of the weights")
    int8_mask: bool = Field(False, description="accepted for mergekit compatibility; no effect")


class TaskArithmeticModelParams(MethodParams):
    weight: float = Field(1.0, description="scale of this model's task vector (negative subtracts)")


def task_arithmetic_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[TaskArithmeticModelParams],
    params: TaskArithmeticParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """Task arithmetic (Ilharco et al., 2023): ``base + lambda * sum_i w_i (x_i - base)``."""
    assert base is not None
    return generalized_task_arithmetic(
        tensors, base, [p.weight for p in model_params], None,
        lambda_=params.lambda_, normalize=params.normalize,
    )


TASK_ARITHMETIC = MergeMethod(
    name="task_arithmetic",
    summary="add weighted task vectors (model - base) to the base model",
    merge=task_arithmetic_merge,
    params=TaskArithmeticParams,
    model_params=TaskArithmeticModelParams,
    base="required",
    elementwise=True,
)

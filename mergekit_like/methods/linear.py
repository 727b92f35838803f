"""Linear merge: uniform or weighted soup, ``sum(w_i * x_i) / sum(w_i)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.spec import MergeMethod, MethodParams, TensorContext

if TYPE_CHECKING:
    import torch


class LinearParams(MethodParams):
    normalize: bool = Field(True, description="divide by the sum of the weights")


class LinearModelParams(MethodParams):
    weight: float = Field(1.0, description="mixing weight of this model")


def linear_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[LinearModelParams],
    params: LinearParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """Weighted average of the ingredients (a uniform soup when every weight is 1)."""
    weights = [p.weight for p in model_params]
    out = tensors[0] * weights[0]
    for w, t in zip(weights[1:], tensors[1:], strict=True):
        # a product, then a sum: add_(t, alpha=w) may fuse them (one rounding) on some
        # devices and not on others; the inputs are ours to overwrite
        out.add_(t.mul_(w))
    if params.normalize:
        total = sum(weights)
        if total == 0:
            raise ValueError("the weights sum to zero; set normalize: false or change them")
        out.div_(out.new_full((), total))  # CUDA divides by a Python number as x * (1 / total)
    return out


LINEAR = MergeMethod(
    name="linear",
    summary="weighted average of the models (uniform soup when all weights are equal)",
    merge=linear_merge,
    params=LinearParams,
    model_params=LinearModelParams,
    elementwise=True,
)

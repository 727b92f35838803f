"""Passthrough: copy one model's tensor, optionally scaled. Used with slices to stack layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.spec import MergeMethod, MethodParams, TensorContext

if TYPE_CHECKING:
    import torch


class PassthroughModelParams(MethodParams):
    scale: float = Field(1.0, description="multiply the tensor by this factor")


def passthrough_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[PassthroughModelParams],
    params: MethodParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """Return the single input tensor, times ``scale``."""
    (tensor,) = tensors
    scale = model_params[0].scale
    return tensor if scale == 1.0 else tensor.mul_(scale)


PASSTHROUGH = MergeMethod(
    name="passthrough",
    summary="copy each tensor from its single source (layer stacking with slices)",
    merge=passthrough_merge,
    model_params=PassthroughModelParams,
    elementwise=True,
    max_models=1,
)

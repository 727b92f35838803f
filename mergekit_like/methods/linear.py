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
    """Weighted average of the ingredients (a uniform soup when every weight is 1).

    Rounded as mergekit rounds it: a float32 accumulator (float64 for float64 inputs), one
    fused multiply-add per model (``addcmul_``: the product is not rounded on its own), then
    a true division by the float32 sum of the float32 weights; half-precision
    inputs are accumulated in float32 and rounded once at the end.
    """
    import torch

    first = tensors[0]
    acc_dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    weights = torch.tensor([p.weight for p in model_params], dtype=acc_dtype, device=first.device)
    total = None
    if params.normalize:
        total = weights.reshape(1, -1).sum(dim=1).reshape(())  # mergekit's op: its bytes
        if total == 0:
            raise ValueError("the weights sum to zero; set normalize: false or change them")
    soup = ctx.kernels.soup() if ctx is not None else None
    if soup is not None and soup.supports(tensors):  # the same operations in one C loop
        fused = soup.soup(tensors, weights, total)
        if fused is not None:  # else a NaN: torch writes its own NaN bits
            return fused
    out = torch.zeros_like(first, dtype=acc_dtype)
    for i, t in enumerate(tensors):
        out.addcmul_(t, weights[i])
    if total is not None:
        out.div_(total)
    return out if out.dtype == first.dtype else out.to(first.dtype)


LINEAR = MergeMethod(
    name="linear",
    summary="weighted average of the models (uniform soup when all weights are equal)",
    merge=linear_merge,
    params=LinearParams,
    model_params=LinearModelParams,
    elementwise=True,
)

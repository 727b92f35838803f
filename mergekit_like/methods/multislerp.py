"""Multi-SLERP: a weighted spherical barycentre of any number of models.

Following mergekit's ``multislerp``, for tensors ``x_i`` (task vectors ``x_i - base`` when a
``base_model`` is given) with weights ``w_i`` (divided by their sum when
``normalize_weights``), each tensor taken as one flat vector:

    u_i = x_i / (|x_i| + eps)                    directions on the unit sphere
    m   = sum_i w_i u_i;  m = m / |m|            tangent point: the normalised weighted mean
    v   = sum_i w_i (u_i - (u_i . m) m)          weighted mean in the tangent space at m
    out = (cos(|v|') m + sin(|v|') / |v|' v) * sum_i w_i |x_i|      with |v|' = |v| + eps

(plus ``base`` when given). This is one step of a Karcher-mean iteration that projects the
tangent vectors instead of taking their logarithm; for the exact Riemannian mean use
``karcher``. When ``|m| < eps`` (e.g. two opposite vectors with equal weights) mergekit
falls back to ``w_1 x_1 + w_2 x_2`` for two models and fails for more; so do we.

A single model is returned unchanged (its own tensor, not relative to the base). Unlike
mergekit, weights that sum to zero with ``normalize_weights`` are an error instead of a
tensor of NaNs.

mergekit's bytes: every step above is a whole-tensor torch operation in mergekit, in the
tensors' dtype, and the reductions' rounding depends on the whole tensor (its length, the
thread count) in a way no sum of row chunks reproduces, so :func:`multislerp_whole` makes
mergekit's calls on the whole tensors: every tensor is merged whole (not in row chunks; the
memory mergekit needs too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.spec import MergeMethod, MethodParams, TensorContext

if TYPE_CHECKING:
    import torch


class MultiSlerpParams(MethodParams):
    normalize_weights: bool = Field(True, description="divide the weights by their sum")
    eps: float = Field(1e-8, ge=0.0, description="small constant for numerical stability")


class MultiSlerpModelParams(MethodParams):
    weight: float = Field(1.0, description="relative weight of this model")


def _check_weights(weights: Sequence[float], normalize: bool) -> None:
    if normalize and sum(float(x) for x in weights) == 0:
        raise ValueError("the weights sum to zero; set normalize_weights: false or change them")


def multislerp_whole(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    base: torch.Tensor | None = None,
    *,
    normalize_weights: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """The formula above on whole tensors, in mergekit's torch calls and order (in the
    tensors' dtype): stacked task vectors, float weights as a tensor of that dtype, row
    norms of the stack, sums over the stack's first dimension. A new tensor."""
    import torch

    stacked = torch.stack(list(tensors), dim=0)
    if base is not None:
        stacked -= base
    flat = stacked.view(stacked.shape[0], -1)
    w = torch.tensor([float(x) for x in weights], dtype=stacked.dtype, device=stacked.device)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if len(tensors) != 2:
            raise ValueError("the weighted directions cancel out (opposite tensors with "
                             "balancing weights); change the weights")
        out = (stacked[0] * w[0] + stacked[1] * w[1]).view(stacked.shape[1:])
        return out if base is None else out + base
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * w.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent) + eps
    out = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    out = (out * (norms.squeeze(-1) * w).sum()).view(stacked.shape[1:])
    return out if base is None else out + base


def multislerp(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    base: torch.Tensor | None = None,
    *,
    normalize_weights: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Weighted barycentre of ``tensors`` on the hypersphere (around ``base`` if given).

    >>> import torch
    >>> multislerp([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], [1.0, 1.0])
    tensor([0.7071, 0.7071])
    """
    if len(tensors) == 1:
        return tensors[0]
    _check_weights(weights, normalize_weights)
    return multislerp_whole(tensors, weights, base, normalize_weights=normalize_weights,
                            eps=eps)


def multislerp_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[MultiSlerpModelParams],
    params: MultiSlerpParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """Multi-SLERP of the models, or of their task vectors when a base model is given."""
    return multislerp(tensors, [p.weight for p in model_params], base,
                      normalize_weights=params.normalize_weights, eps=params.eps)


MULTISLERP = MergeMethod(
    name="multislerp",
    summary="weighted spherical barycentre of any number of models (task vectors with a base)",
    merge=multislerp_merge,
    params=MultiSlerpParams,
    model_params=MultiSlerpModelParams,
    base="optional",
    min_models=1,
)

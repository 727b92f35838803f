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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.reductions import stable_norm, stable_sum
from mergekit_like.methods.spec import MergeMethod, MethodParams, TensorContext

if TYPE_CHECKING:
    import torch


class MultiSlerpParams(MethodParams):
    normalize_weights: bool = Field(True, description="divide the weights by their sum")
    eps: float = Field(1e-8, ge=0.0, description="small constant for numerical stability")


class MultiSlerpModelParams(MethodParams):
    weight: float = Field(1.0, description="relative weight of this model")


def multislerp(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    base: torch.Tensor | None = None,
    *,
    normalize_weights: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Weighted barycentre of ``tensors`` on the hypersphere (around ``base`` if given).

    Works in place on ``tensors`` (they must be owned by the caller).

    >>> import torch
    >>> multislerp([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], [1.0, 1.0])
    tensor([0.7071, 0.7071])
    """
    import torch

    if len(tensors) == 1:
        return tensors[0]
    w = [float(x) for x in weights]
    if normalize_weights:
        total = sum(w)
        if total == 0:
            raise ValueError("the weights sum to zero; set normalize_weights: false "
                             "or change them")
        w = [x / total for x in w]
    deltas = [x.sub_(base) if base is not None else x for x in tensors]
    norms = [stable_norm(d).item() for d in deltas]
    units = [d / (n + eps) for d, n in zip(deltas, norms, strict=True)]
    mean = torch.zeros_like(units[0])
    for wi, u in zip(w, units, strict=True):
        mean.add_(u, alpha=wi)
    mean_norm = stable_norm(mean).item()
    if mean_norm < eps:
        if len(tensors) != 2:
            raise ValueError("the weighted directions cancel out (opposite tensors with "
                             "balancing weights); change the weights")
        out = deltas[0].mul_(w[0]).add_(deltas[1], alpha=w[1])
        return out.add_(base) if base is not None else out
    mean.div_(mean_norm)
    tangent = torch.zeros_like(mean)
    for wi, u in zip(w, units, strict=True):
        dot = stable_sum(u.reshape(-1) * mean.reshape(-1)).item()
        tangent.add_(u.sub_(mean, alpha=dot), alpha=wi)
    tangent_norm = stable_norm(tangent).item() + eps
    out = mean.mul_(math.cos(tangent_norm)).add_(
        tangent, alpha=math.sin(tangent_norm) / tangent_norm)
    out.mul_(sum(wi * n for wi, n in zip(w, norms, strict=True)))
    return out.add_(base) if base is not None else out


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

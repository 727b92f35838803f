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

Every vector above is a combination of the ``x_i``, so one pass gathers what the formula
needs, the Gram matrix ``x_i . x_j`` (:class:`~.gram.GramStats`, fixed-order sums), and
the result is ``sum_i k_i x_i`` with coefficients worked out on the host in float64. A
large tensor is therefore merged in row chunks after that pass, with the bytes of merging
it whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.gram import GramStats
from mergekit_like.methods.spec import MergeMethod, MethodParams, TensorContext, gather_whole

if TYPE_CHECKING:
    import torch

    from mergekit_like.methods.kernels import Kernels


class MultiSlerpParams(MethodParams):
    normalize_weights: bool = Field(True, description="divide the weights by their sum")
    eps: float = Field(1e-8, ge=0.0, description="small constant for numerical stability")


class MultiSlerpModelParams(MethodParams):
    weight: float = Field(1.0, description="relative weight of this model")


def _weights(weights: Sequence[float], normalize: bool) -> list[float]:
    w = [float(x) for x in weights]
    if not normalize:
        return w
    total = sum(w)
    if total == 0:
        raise ValueError("the weights sum to zero; set normalize_weights: false or change them")
    return [x / total for x in w]


def multislerp_coefficients(gram: Sequence[Sequence[float]], w: Sequence[float],
                            eps: float) -> list[float]:
    """``k`` with ``multislerp = sum_i k_i x_i``, from the Gram matrix of the ``x_i``.

    >>> [round(k, 4) for k in multislerp_coefficients([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5],
    ...                                                1e-8)]
    [0.7071, 0.7071]
    """
    n = len(w)

    def dot(a: Sequence[float], b: Sequence[float]) -> float:
        return sum(a[i] * gram[i][j] * b[j] for i in range(n) for j in range(n))

    norms = [math.sqrt(max(gram[i][i], 0.0)) for i in range(n)]
    mean = [w[i] / (norms[i] + eps) for i in range(n)]  # sum_i w_i u_i
    mean_norm = math.sqrt(max(dot(mean, mean), 0.0))
    if mean_norm < eps:
        if n != 2:
            raise ValueError("the weighted directions cancel out (opposite tensors with "
                             "balancing weights); change the weights")
        return list(w)
    unit = [c / mean_norm for c in mean]  # m / |m|
    along = sum(w[i] / (norms[i] + eps) * sum(gram[i][j] * unit[j] for j in range(n))
                for i in range(n))  # sum_i w_i (u_i . m)
    tangent = [mean[i] - along * unit[i] for i in range(n)]
    tangent_norm = math.sqrt(max(dot(tangent, tangent), 0.0)) + eps
    scale = sum(wi * ni for wi, ni in zip(w, norms, strict=True))
    return [(math.cos(tangent_norm) * unit[i]
             + math.sin(tangent_norm) / tangent_norm * tangent[i]) * scale for i in range(n)]


def multislerp(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    base: torch.Tensor | None = None,
    *,
    normalize_weights: bool = True,
    eps: float = 1e-8,
    kernels: Kernels | None = None,
) -> torch.Tensor:
    """Weighted barycentre of ``tensors`` on the hypersphere (around ``base`` if given).

    Works in place on ``tensors`` (they must be owned by the caller). ``kernels``: as for
    :class:`~.gram.GramStats`.

    >>> import torch
    >>> multislerp([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], [1.0, 1.0])
    tensor([0.7071, 0.7071])
    """
    if len(tensors) == 1:
        return tensors[0]
    w = _weights(weights, normalize_weights)
    stats = GramStats(tensors[0].numel(), lambda gram: multislerp_coefficients(gram, w, eps),
                      kernels=kernels)
    deltas = [x.sub_(base) if base is not None else x for x in tensors]
    out = gather_whole(stats, deltas, None).apply(deltas)
    return out.add_(base) if base is not None else out


def multislerp_stats(shape: tuple[int, ...], width: int,
                     model_params: Sequence[MultiSlerpModelParams], params: MultiSlerpParams,
                     ctx: TensorContext) -> GramStats | None:
    """The Gram pass (:class:`~.gram.GramStats`) for a large tensor merged in row chunks
    (None for one model, which is returned as it is)."""
    if len(model_params) == 1:
        return None
    w = _weights([p.weight for p in model_params], params.normalize_weights)
    return GramStats(math.prod(shape), lambda gram: multislerp_coefficients(gram, w, params.eps),
                     kernels=ctx.kernels)


def multislerp_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[MultiSlerpModelParams],
    params: MultiSlerpParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """Multi-SLERP of the models, or of their task vectors when a base model is given."""
    if ctx.stats is None or len(tensors) == 1:
        return multislerp(tensors, [p.weight for p in model_params], base,
                          normalize_weights=params.normalize_weights, eps=params.eps,
                          kernels=ctx.kernels)
    assert isinstance(ctx.stats, GramStats)
    deltas = [x.sub_(base) if base is not None else x for x in tensors]
    out = ctx.stats.apply(deltas)
    return out.add_(base) if base is not None else out


MULTISLERP = MergeMethod(
    name="multislerp",
    summary="weighted spherical barycentre of any number of models (task vectors with a base)",
    merge=multislerp_merge,
    stats=multislerp_stats,
    kernels=True,
    elementwise=True,
    params=MultiSlerpParams,
    model_params=MultiSlerpModelParams,
    base="optional",
    min_models=1,
)

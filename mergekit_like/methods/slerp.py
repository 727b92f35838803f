"""SLERP: spherical linear interpolation between the base model and one other model.

Each tensor is treated as one flat vector. With ``theta`` the angle between the two
vectors (from their normalised dot product), the result is

    out = sin((1 - t) * theta) / sin(theta) * base + sin(t * theta) / sin(theta) * other

so ``t = 0`` gives the base model and ``t = 1`` the other one. The interpolation weights come
from the *directions* of the two tensors, but the formula is applied to the unnormalised
tensors, exactly as mergekit does (the paper-style "slerp the unit vectors, then rescale"
would give a different magnitude; we follow mergekit).

Edge cases, as in mergekit's ``slerp``:

- when ``|cos(theta)| > DOT_THRESHOLD`` (0.9995) the vectors are taken as colinear and the
  result is plain linear interpolation ``(1 - t) * base + t * other``;
- a tensor whose norm is at most ``EPS`` (1e-8) is not normalised before the dot product
  (so an all-zero tensor gives ``cos(theta) = 0``, ``theta = pi / 2``).

The result at an element depends on the norms of whole tensors: a large tensor is merged in
row chunks after one pass that sums its norms and dot product (:func:`slerp_stats_for`), with
the same bytes as merging it whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.gram import GramStats
from mergekit_like.methods.spec import (
    MergeMethod,
    MethodParams,
    NoParams,
    TensorContext,
    gather_whole,
)

if TYPE_CHECKING:
    import torch

    from mergekit_like.methods.kernels import Kernels

DOT_THRESHOLD = 0.9995
"""Above this ``|cos(theta)|`` the two tensors count as colinear: linear interpolation."""

EPS = 1e-8
"""Tensors with a norm at most this are not normalised before the dot product."""


class SlerpParams(MethodParams):
    t: float = Field(
        ..., ge=0.0, le=1.0,
        description="interpolation factor: 0 gives the base model, 1 the other model",
    )


def slerp_coefficients(t: float, n0: float, n1: float, dot: float, *,
                       dot_threshold: float = DOT_THRESHOLD,
                       eps: float = EPS) -> tuple[float, float]:
    """``(s0, s1)`` with ``out = s0 * v0 + s1 * v1``, from the norms and the dot product.

    >>> slerp_coefficients(0.5, 1.0, 1.0, 0.0)
    (0.7071067811865475, 0.7071067811865475)
    """
    dot /= (n0 if n0 > eps else 1.0) * (n1 if n1 > eps else 1.0)
    if abs(dot) > dot_threshold:
        return 1.0 - t, t
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    return math.sin(theta - theta * t) / sin_theta, math.sin(theta * t) / sin_theta


def slerp(
    t: float,
    v0: torch.Tensor,
    v1: torch.Tensor,
    *,
    dot_threshold: float = DOT_THRESHOLD,
    eps: float = EPS,
    kernels: Kernels | None = None,
) -> torch.Tensor:
    """Spherically interpolate from ``v0`` (t=0) to ``v1`` (t=1), each taken as one vector.

    Works in place on ``v0`` and ``v1`` (they must be owned by the caller). ``kernels``: as
    for :class:`~.gram.GramStats`.

    >>> import torch
    >>> slerp(0.5, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    tensor([0.7071, 0.7071])
    """
    stats = slerp_stats_for(t, v0.numel(), dot_threshold=dot_threshold, eps=eps,
                            kernels=kernels)
    return gather_whole(stats, [v1], v0).apply([v0, v1])


def slerp_stats_for(t: float, numel: int, *, dot_threshold: float = DOT_THRESHOLD,
                    eps: float = EPS, kernels: Kernels | None = None) -> GramStats:
    """The norms and dot product of the base (``v0``) and the other tensor (``v1``) over a
    whole tensor, chunk by chunk (:class:`~.gram.GramStats`): each chunk is then
    ``s0 * v0 + s1 * v1`` with coefficients from the whole tensors, the bytes of merging it
    whole."""

    def solve(gram: list[list[float]]) -> tuple[float, float]:
        (g00, dot), (_, g11) = gram
        return slerp_coefficients(t, math.sqrt(g00), math.sqrt(g11), dot,
                                  dot_threshold=dot_threshold, eps=eps)

    return GramStats(numel, solve, lambda tensors, base: [base, tensors[0]], kernels)


def slerp_stats(shape: tuple[int, ...], width: int, model_params: Sequence[NoParams],
                params: SlerpParams, ctx: TensorContext) -> GramStats:
    """:func:`slerp_stats_for` for merging a large tensor in row chunks."""
    return slerp_stats_for(params.t, math.prod(shape), kernels=ctx.kernels)


def slerp_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[NoParams],
    params: SlerpParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """SLERP from the base model's tensor (t=0) to the other model's (t=1)."""
    assert base is not None
    (other,) = tensors
    if ctx.stats is not None:
        assert isinstance(ctx.stats, GramStats)
        return ctx.stats.apply([base, other])
    return slerp(params.t, base, other, kernels=ctx.kernels)


SLERP = MergeMethod(
    name="slerp",
    summary="spherical interpolation from base_model (t=0) to one other model (t=1)",
    merge=slerp_merge,
    stats=slerp_stats,
    kernels=True,
    elementwise=True,
    params=SlerpParams,
    base="required",
    min_models=1,
    max_models=1,
)

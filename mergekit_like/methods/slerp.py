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

The result at an element depends on the norms of whole tensors, so this method is not
elementwise and receives whole tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.reductions import stable_norm, stable_sum
from mergekit_like.methods.spec import MergeMethod, MethodParams, NoParams, TensorContext

if TYPE_CHECKING:
    import torch

DOT_THRESHOLD = 0.9995
"""Above this ``|cos(theta)|`` the two tensors count as colinear: linear interpolation."""

EPS = 1e-8
"""Tensors with a norm at most this are not normalised before the dot product."""


class SlerpParams(MethodParams):
    t: float = Field(
        ..., ge=0.0, le=1.0,
        description="interpolation factor: 0 gives the base model, 1 the other model",
    )


def slerp(
    t: float,
    v0: torch.Tensor,
    v1: torch.Tensor,
    *,
    dot_threshold: float = DOT_THRESHOLD,
    eps: float = EPS,
) -> torch.Tensor:
    """Spherically interpolate from ``v0`` (t=0) to ``v1`` (t=1), each taken as one vector.

    Works in place on ``v0`` and ``v1`` (they must be owned by the caller).

    >>> import torch
    >>> slerp(0.5, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    tensor([0.7071, 0.7071])
    """

    a, b = v0.reshape(-1), v1.reshape(-1)
    n0 = stable_norm(a).item()
    n1 = stable_norm(b).item()
    dot = stable_sum(a * b).item()
    dot /= (n0 if n0 > eps else 1.0) * (n1 if n1 > eps else 1.0)
    if abs(dot) > dot_threshold:
        return v0.mul_(1.0 - t).add_(v1, alpha=t)
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    s0 = math.sin(theta - theta * t) / sin_theta
    s1 = math.sin(theta * t) / sin_theta
    return v0.mul_(s0).add_(v1, alpha=s1)


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
    return slerp(params.t, base, other)


SLERP = MergeMethod(
    name="slerp",
    summary="spherical interpolation from base_model (t=0) to one other model (t=1)",
    merge=slerp_merge,
    params=SlerpParams,
    base="required",
    min_models=1,
    max_models=1,
)

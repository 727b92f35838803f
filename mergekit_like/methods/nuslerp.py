"""NuSLERP: mergekit's newer SLERP, with per-model weights and an optional base model.

Exactly two models are interpolated, with ``t = w_2 / (w_1 + w_2)`` from their ``weight``
parameters (``t = 0.5`` when the weights sum to about zero, ``|w_1 + w_2| < 1e-6``), so
``weight: 1 - t`` on the first model and ``weight: t`` on the second reproduces ``slerp``'s
``t`` (up to slerp's colinear threshold, see below).

Without a base model the two tensors themselves are interpolated; with a ``base_model``
(which must not be one of the two) their task vectors are, and the base is added back:

    out = base + nuslerp(t, x_1 - base, x_2 - base)

``nuslerp(t, v0, v1)`` is spherical interpolation ``(sin((1-t) theta) v0 + sin(t theta) v1)
/ sin(theta)`` of the unnormalised vectors, with ``theta`` from the normalised dot product
(norms clamped below at 1e-7). What counts as one vector:

- ``nuslerp_flatten: true`` (default): the whole tensor, as in ``slerp``;
- ``nuslerp_flatten: false``: every slice along the *last* dimension (each row of a 2-D
  weight) is interpolated on its own;
- ``nuslerp_flatten: false, nuslerp_row_wise: true``: every slice along the *first*
  dimension (each column of a 2-D weight) instead.

The last two follow mergekit's code (the row-wise flag transposes so that dimension 0 is
reduced); mergekit's documentation describes the two flags the other way round.

Unlike ``slerp``, a vector pair falls back to linear interpolation only when
``|sin(theta)| < 1e-8`` (mergekit's nuslerp has no 0.9995 dot threshold).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.spec import MergeMethod, MethodParams, TensorContext

if TYPE_CHECKING:
    import torch

NORM_EPS = 1e-7
"""Norms are clamped below at this value before normalising."""

COLINEAR_EPS = 1e-8
"""Vector pairs with ``|sin(theta)|`` below this are interpolated linearly."""


class NuSlerpParams(MethodParams):
    nuslerp_flatten: bool = Field(
        True, description="interpolate each tensor as one flat vector (false: row by row)"
    )
    nuslerp_row_wise: bool = Field(
        False, description="with nuslerp_flatten false: vectors along dim 0 instead of the last"
    )


class NuSlerpModelParams(MethodParams):
    weight: float = Field(
        1.0, description="relative weight; t = weight_2 / (weight_1 + weight_2)"
    )


def nuslerp(
    t: float, v0: torch.Tensor, v1: torch.Tensor, *, flatten: bool = True,
    row_wise: bool = False,
) -> torch.Tensor:
    """Spherically interpolate ``v0`` (t=0) to ``v1`` (t=1), whole or vector by vector.

    >>> import torch
    >>> nuslerp(0.5, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    tensor([0.7071, 0.7071])
    """
    import torch

    shape = v0.shape
    if flatten or v0.dim() == 0:
        a, b = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        a, b = v0.transpose(0, -1), v1.transpose(0, -1)
    else:
        a, b = v0, v1
    n0 = torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp_min_(NORM_EPS)
    n1 = torch.linalg.vector_norm(b, dim=-1, keepdim=True).clamp_min_(NORM_EPS)
    cos = torch.linalg.vecdot(a, b, dim=-1).unsqueeze(-1).div_(n0).div_(n1)
    theta = cos.clamp_(-1.0, 1.0).acos_()
    sin_theta = torch.sin(theta)
    out = torch.sin((1.0 - t) * theta) * a + torch.sin(t * theta) * b
    out.div_(sin_theta)
    colinear = sin_theta.abs() < COLINEAR_EPS
    if bool(colinear.any()):
        out = torch.where(colinear, (1.0 - t) * a + t * b, out)
    if row_wise and not flatten and v0.dim() > 0:
        out = out.transpose(0, -1)
    return out.reshape(shape)


def nuslerp_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[NuSlerpModelParams],
    params: NuSlerpParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """NuSLERP of two models, or of their task vectors when a base model is given."""
    x0, x1 = tensors
    w0, w1 = (p.weight for p in model_params)
    total = w0 + w1
    t = 0.5 if abs(total) < 1e-6 else w1 / total
    opts = {"flatten": params.nuslerp_flatten, "row_wise": params.nuslerp_row_wise}
    if base is None:
        return nuslerp(t, x0, x1, **opts)
    return nuslerp(t, x0.sub_(base), x1.sub_(base), **opts).add_(base)


NUSLERP = MergeMethod(
    name="nuslerp",
    summary="spherical interpolation of two models by weight; of task vectors with a base",
    merge=nuslerp_merge,
    params=NuSlerpParams,
    model_params=NuSlerpModelParams,
    base="optional",
    min_models=2,
    max_models=2,
)

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
``1 - cos(theta)^2 <= 1e-16`` (mergekit's nuslerp has no 0.9995 dot threshold).

mergekit's bytes: mergekit computes nuslerp in the inputs' (compute) dtype with one torch
call per reduction over the whole tensor (``torch.norm``, ``torch.sum``), whose rounding
depends on the tensor's length and, for ``sum``, on the thread count, and no sum of row
chunks reproduces it; :class:`VectorAngles` makes the same calls on the same tensors. So a
flattened or ``nuslerp_row_wise`` nuslerp merges each tensor whole (the memory mergekit
needs too); row by row, large tensors are merged in chunks of whole rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    """Spherically interpolate ``v0`` (t=0) to ``v1`` (t=1), whole or vector by vector, in
    mergekit's torch calls (:class:`VectorAngles`). A new tensor.

    >>> import torch
    >>> nuslerp(0.5, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    tensor([0.7071, 0.7071])
    """
    shape = v0.shape
    if flatten:
        a, b = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        a, b = v0.transpose(0, -1), v1.transpose(0, -1)
    else:
        a, b = v0, v1
    out = VectorAngles.of(t, a, b).interpolate(a, b)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


@dataclass(frozen=True)
class VectorAngles:
    """Per vector (the last dimension of ``a`` and ``b``), the angle mergekit's NuSLERP
    interpolates by, from its own torch calls on the tensors it reduces: ``torch.norm``
    clamped at :data:`NORM_EPS`, ``torch.sum`` of the normalised products clamped to
    [-1, 1], colinear where ``1 - cos^2 <= 1e-16``. :meth:`interpolate` is elementwise, so
    any rows of the vectors take the bytes of the whole."""

    t: float
    theta: torch.Tensor  # shaped (..., 1)
    colinear: torch.Tensor

    @classmethod
    def of(cls, t: float, a: torch.Tensor, b: torch.Tensor) -> VectorAngles:
        """From the vectors along the last dimension of ``a`` and ``b`` (whole vectors)."""
        import torch

        ua = a / torch.norm(a, dim=-1, keepdim=True).clamp(min=NORM_EPS)
        ub = b / torch.norm(b, dim=-1, keepdim=True).clamp(min=NORM_EPS)
        cos = torch.sum(ua * ub, dim=-1, keepdim=True).clamp(-1, 1)
        colinear = (1 - cos.square()) <= COLINEAR_EPS**2
        return cls(t, torch.acos(torch.where(colinear, 0, cos)), colinear)

    def interpolate(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """mergekit's ``(sin((1-t) theta) a + sin(t theta) b) / sin(theta)``, linear where
        the pair is colinear (a new tensor)."""
        import torch

        t, theta = self.t, self.theta
        out = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
        return torch.where(self.colinear, (1 - t) * a + t * b, out)


def _t(model_params: Sequence[NuSlerpModelParams]) -> float:
    w0, w1 = (p.weight for p in model_params)
    total = w0 + w1
    return 0.5 if abs(total) < 1e-6 else w1 / total


def _in_row_chunks(params: NuSlerpParams) -> bool:
    """Row by row (the last dimension's vectors), each chunk holds whole vectors; flattened
    or along dim 0, mergekit reduces the whole tensor in one torch call, so it is merged
    whole."""
    return not params.nuslerp_flatten and not params.nuslerp_row_wise


def nuslerp_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[NuSlerpModelParams],
    params: NuSlerpParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """NuSLERP of two models, or of their task vectors when a base model is given."""
    x0, x1 = tensors
    if base is not None:
        x0, x1 = x0.sub_(base), x1.sub_(base)
    out = nuslerp(_t(model_params), x0, x1, flatten=params.nuslerp_flatten,
                  row_wise=params.nuslerp_row_wise)
    return out if base is None else out.add_(base)


NUSLERP = MergeMethod(
    name="nuslerp",
    summary="spherical interpolation of two models by weight; of task vectors with a base",
    merge=nuslerp_merge,
    elementwise=_in_row_chunks,
    params=NuSlerpParams,
    model_params=NuSlerpModelParams,
    base="optional",
    min_models=2,
    max_models=2,
)

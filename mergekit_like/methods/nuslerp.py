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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.gram import GramStats, task_vectors
from mergekit_like.methods.reductions import BLOCK, ColumnSums, stable_sum
from mergekit_like.methods.spec import MergeMethod, MethodParams, TensorContext, gather_whole

if TYPE_CHECKING:
    import torch

    from mergekit_like.methods.kernels import Kernels

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


def nuslerp_coefficients(t: float, n0: float, n1: float, dot: float) -> tuple[float, float]:
    """``(s0, s1)`` with ``nuslerp = s0 * v0 + s1 * v1``, from the norms and dot product.

    >>> nuslerp_coefficients(0.5, 1.0, 1.0, 0.0)
    (0.7071067811865475, 0.7071067811865475)
    """
    cos = dot / max(n0, NORM_EPS) / max(n1, NORM_EPS)
    theta = math.acos(min(max(cos, -1.0), 1.0))
    sin_theta = math.sin(theta)
    if abs(sin_theta) < COLINEAR_EPS:
        return 1.0 - t, t
    return math.sin((1.0 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta


def nuslerp_stats_for(t: float, numel: int, kernels: Kernels | None = None) -> GramStats:
    """The two (task-vector) tensors' norms and dot product over a whole flattened tensor,
    chunk by chunk (:class:`~.gram.GramStats`): each chunk is then ``s0 * v0 + s1 * v1``
    with coefficients from the whole tensors."""

    def solve(gram: list[list[float]]) -> tuple[float, float]:
        (g00, dot), (_, g11) = gram
        return nuslerp_coefficients(t, math.sqrt(g00), math.sqrt(g11), dot)

    return GramStats(numel, solve, kernels=kernels)


def nuslerp(
    t: float, v0: torch.Tensor, v1: torch.Tensor, *, flatten: bool = True,
    row_wise: bool = False, kernels: Kernels | None = None,
) -> torch.Tensor:
    """Spherically interpolate ``v0`` (t=0) to ``v1`` (t=1), whole or vector by vector.

    Works in place on ``v0`` and ``v1`` (they must be owned by the caller). Every sum is
    taken in a fixed order (:mod:`~mergekit_like.methods.reductions`), so a row's result
    does not depend on the rows beside it, nor the whole tensor's on threads.

    >>> import torch
    >>> nuslerp(0.5, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    tensor([0.7071, 0.7071])
    """
    if flatten or v0.dim() <= 1:
        return gather_whole(nuslerp_stats_for(t, v0.numel(), kernels), [v0, v1],
                            None).apply([v0, v1])
    shape = v0.shape
    a, b = (v0.transpose(0, -1), v1.transpose(0, -1)) if row_wise else (v0, v1)
    angles = VectorAngles.of(t, stable_sum(a * a, -1), stable_sum(b * b, -1),
                             stable_sum(a * b, -1))
    out = angles.interpolate(a, b)
    if row_wise:
        out = out.transpose(0, -1)
    return out.reshape(shape)


@dataclass(frozen=True)
class VectorAngles:
    """Per vector (the last dimension of ``a`` and ``b`` in :meth:`interpolate`), what
    NuSLERP needs from the sums over it: the interpolation's weights and ``sin(theta)``.
    Every vector's entries then take the same elementwise operations, whichever rows of them
    a chunk holds."""

    t: float
    s0: torch.Tensor  # sin((1 - t) theta), shaped (..., 1)
    s1: torch.Tensor  # sin(t theta)
    sin_theta: torch.Tensor
    colinear: torch.Tensor | None  # where |sin(theta)| < COLINEAR_EPS (None: nowhere)

    @classmethod
    def of(cls, t: float, aa: torch.Tensor, bb: torch.Tensor, ab: torch.Tensor) -> VectorAngles:
        """From each vector pair's sums of ``a * a``, ``b * b`` and ``a * b``."""
        import torch

        n0 = aa.sqrt_().clamp_min_(NORM_EPS).unsqueeze(-1)
        n1 = bb.sqrt_().clamp_min_(NORM_EPS).unsqueeze(-1)
        cos = ab.unsqueeze(-1).div_(n0).div_(n1)
        theta = cos.clamp_(-1.0, 1.0).acos_()
        sin_theta = torch.sin(theta)
        colinear = sin_theta.abs() < COLINEAR_EPS
        return cls(t, torch.sin((1.0 - t) * theta), torch.sin(t * theta), sin_theta,
                   colinear if bool(colinear.any()) else None)

    def interpolate(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``(s0 a + s1 b) / sin(theta)``, linear where the pair is colinear (a new tensor)."""
        import torch

        out = self.s0 * a + self.s1 * b
        out.div_(self.sin_theta)
        if self.colinear is not None:
            out = torch.where(self.colinear, (1.0 - self.t) * a + self.t * b, out)
        return out


class ColumnStats:
    """NuSLERP's sums over each vector along dimension 0 (``nuslerp_row_wise``), gathered
    over row chunks of whole :data:`~.reductions.BLOCK`-row blocks
    (:class:`~.reductions.ColumnSums`); then :meth:`apply` interpolates chunk by chunk with
    the bytes of the whole tensor. Implements :class:`~.spec.TensorStats`."""

    rounds = 1

    def __init__(self, t: float, rows: int) -> None:
        self.t = t
        self._sums = [ColumnSums(rows) for _ in range(3)]  # a * a, b * b, a * b
        self.angles: VectorAngles | None = None

    def wants(self, round_: int) -> bool:
        """The one round is needed."""
        return True

    def observe(self, round_: int, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                start: int) -> None:
        a, b = task_vectors(tensors, base)
        for sums, product in zip(self._sums, (a * a, b * b, a * b), strict=True):
            sums.add(product)

    def finish(self, round_: int) -> None:
        self.angles = VectorAngles.of(self.t, *(s.total() for s in self._sums))

    def apply(self, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        """The chunk's rows of the interpolation (``v0``, ``v1``: its rows of the vectors)."""
        assert self.angles is not None, "finish() the round first"
        return self.angles.interpolate(v0.transpose(0, -1), v1.transpose(0, -1)).transpose(0, -1)


def _t(model_params: Sequence[NuSlerpModelParams]) -> float:
    w0, w1 = (p.weight for p in model_params)
    total = w0 + w1
    return 0.5 if abs(total) < 1e-6 else w1 / total


def nuslerp_stats(shape: tuple[int, ...], width: int,
                  model_params: Sequence[NuSlerpModelParams], params: NuSlerpParams,
                  ctx: TensorContext) -> GramStats | ColumnStats | None:
    """:func:`nuslerp_stats_for` for a flattened tensor merged in row chunks;
    :class:`ColumnStats` for vectors along dim 0 (``nuslerp_row_wise``); None row by row
    (each chunk holds whole rows)."""
    if params.nuslerp_flatten:
        return nuslerp_stats_for(_t(model_params), math.prod(shape), ctx.kernels)
    if params.nuslerp_row_wise:
        return ColumnStats(_t(model_params), shape[0])
    return None


def _row_block(params: NuSlerpParams) -> int:
    """Row chunks of whole sum blocks where the vectors run along dim 0."""
    return BLOCK if not params.nuslerp_flatten and params.nuslerp_row_wise else 1


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
    if isinstance(ctx.stats, ColumnStats):
        out = ctx.stats.apply(x0, x1)
    elif ctx.stats is not None:
        assert isinstance(ctx.stats, GramStats)
        out = ctx.stats.apply([x0, x1])
    else:
        out = nuslerp(_t(model_params), x0, x1, flatten=params.nuslerp_flatten,
                      row_wise=params.nuslerp_row_wise, kernels=ctx.kernels)
    return out if base is None else out.add_(base)


NUSLERP = MergeMethod(
    name="nuslerp",
    summary="spherical interpolation of two models by weight; of task vectors with a base",
    merge=nuslerp_merge,
    stats=nuslerp_stats,
    kernels=True,
    elementwise=True,
    row_block=_row_block,
    params=NuSlerpParams,
    model_params=NuSlerpModelParams,
    base="optional",
    min_models=2,
    max_models=2,
)

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
depends on the tensor's length and, for ``sum``, on the thread count; :class:`FlatStats`
makes the same calls on the same whole tensors, gathered from the row chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.gram import task_vectors
from mergekit_like.methods.reductions import BLOCK, ColumnSums, stable_sum
from mergekit_like.methods.spec import MergeMethod, MethodParams, TensorContext, gather_whole

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


class FlatStats:
    """mergekit's flattened NuSLERP statistics in its own torch calls: the whole (task-vector)
    tensors' norms (``torch.norm``, clamped at :data:`NORM_EPS`), the whole tensor's sum of
    the normalised products, clamped to [-1, 1], colinear where ``1 - cos^2 <= 1e-16``.
    Implements :class:`~.spec.TensorStats`.

    mergekit reduces each whole tensor in one torch call, whose summation order depends on
    its length (and, for ``sum``, the thread count); no sum of chunks reproduces it. So the
    row chunks are gathered into the whole flat tensors first (the memory mergekit needs
    too: the two vectors, in the compute dtype), then reduced once; :meth:`apply` is
    elementwise, so every chunk gets the whole tensor's bytes.
    """

    rounds = 1

    def __init__(self, t: float) -> None:
        self.t = t
        self._chunks: list[list[torch.Tensor]] = [[], []]
        self.theta: torch.Tensor | None = None
        self.colinear = False

    def wants(self, round_: int) -> bool:
        """The one round is needed."""
        return True

    def observe(self, round_: int, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                start: int) -> None:
        for chunks, v in zip(self._chunks, task_vectors(tensors, base), strict=True):
            chunks.append(v.reshape(-1).clone() if base is None else v.reshape(-1))

    def finish(self, round_: int) -> None:
        import torch

        v0, v1 = (torch.cat(c) for c in self._chunks)
        self._chunks = [[], []]
        u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=NORM_EPS)
        u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=NORM_EPS)
        del v0, v1
        cos = torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1)
        colinear = (1 - cos.square()) <= COLINEAR_EPS**2
        self.theta = torch.acos(torch.where(colinear, 0, cos))
        self.colinear = bool(colinear.item())

    def apply(self, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        """The chunk's entries of the interpolation (``v0``, ``v1``: its entries of the
        vectors), mergekit's elementwise operations."""
        import torch

        assert self.theta is not None, "finish() the round first"
        t, theta = self.t, self.theta
        if self.colinear:
            return (1 - t) * v0 + t * v1
        return (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)


def nuslerp(
    t: float, v0: torch.Tensor, v1: torch.Tensor, *, flatten: bool = True,
    row_wise: bool = False,
) -> torch.Tensor:
    """Spherically interpolate ``v0`` (t=0) to ``v1`` (t=1), whole or vector by vector.

    Flattened: mergekit's bytes (:class:`FlatStats`). Row by row: every sum is taken in a
    fixed order (:mod:`~mergekit_like.methods.reductions`), so a row's result does not
    depend on the rows beside it, nor on threads.

    >>> import torch
    >>> nuslerp(0.5, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    tensor([0.7071, 0.7071])
    """
    if flatten or v0.dim() <= 1:
        return gather_whole(FlatStats(t), [v0, v1], None).apply(v0, v1)
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
                  ctx: TensorContext) -> FlatStats | ColumnStats | None:
    """:class:`FlatStats` for a flattened tensor merged in row chunks;
    :class:`ColumnStats` for vectors along dim 0 (``nuslerp_row_wise``); None row by row
    (each chunk holds whole rows)."""
    if params.nuslerp_flatten:
        return FlatStats(_t(model_params))
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
        assert isinstance(ctx.stats, FlatStats)
        out = ctx.stats.apply(x0, x1)
    else:
        out = nuslerp(_t(model_params), x0, x1, flatten=params.nuslerp_flatten,
                      row_wise=params.nuslerp_row_wise)
    return out if base is None else out.add_(base)


NUSLERP = MergeMethod(
    name="nuslerp",
    summary="spherical interpolation of two models by weight; of task vectors with a base",
    merge=nuslerp_merge,
    stats=nuslerp_stats,
    elementwise=True,
    row_block=_row_block,
    params=NuSlerpParams,
    model_params=NuSlerpModelParams,
    base="optional",
    min_models=2,
    max_models=2,
)

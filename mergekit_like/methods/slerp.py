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

The result at an element depends on the norms of whole tensors, and mergekit's bytes on how
it reduces them: float32 torch calls (not float64, not numpy) over pieces of 2^20 entries of
the flat tensor, the norm of the pieces' norms, then the sum of the pieces' sums of products
of the normalised tensors, ``acos``/``sin`` on float32 tensors, inputs of any other dtype
upcast to float32 and the result rounded back. :class:`SlerpStats` makes the same calls on the
same pieces (:mod:`~.pieces`), so a large tensor merged in row chunks after two passes (the
norms, then the dot product) has mergekit's bytes, which are those of merging it whole. The
C Gram kernels (one pass, float64 on the host) cannot give those bytes and are not used
here; torch's ``sum`` follows the thread count, as mergekit's does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.pieces import Pieces, work_dtype
from mergekit_like.methods.spec import (
    MergeMethod,
    MethodParams,
    NoParams,
    TensorContext,
    gather_whole,
)

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


class SlerpStats:
    """mergekit's slerp statistics in its own float32 torch calls, over :class:`~.pieces.Pieces`.

    Round 0: the norm of each piece of the base (``v0``) and of the other tensor (``v1``),
    then the norm of those norms; norms at most ``eps`` count as 1. Round 1: the sum of
    ``(v0 / |v0|) * (v1 / |v1|)`` over each piece, then the sum of those, clamped to
    [-1, 1]. The coefficients follow in float32 tensors, as mergekit's do: lerp's
    ``1 - t, t`` where ``|dot| > dot_threshold``, else ``sin((1 - t) theta) / sin(theta)``
    and ``sin(t theta) / sin(theta)``. Implements :class:`~.spec.TensorStats`.
    """

    rounds = 2

    def __init__(self, t: float, numel: int, *, dot_threshold: float = DOT_THRESHOLD,
                 eps: float = EPS) -> None:
        self.t, self.numel, self.dot_threshold, self.eps = t, numel, dot_threshold, eps
        self._pieces = Pieces(2, numel)
        self._parts: list[list[torch.Tensor]] = [[], []]
        self._norms: list[torch.Tensor] = []
        self.coefficients: tuple[torch.Tensor, torch.Tensor] | None = None

    def wants(self, round_: int) -> bool:
        """Both rounds are needed."""
        return True

    def observe(self, round_: int, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                start: int) -> None:
        import torch

        assert base is not None
        for a, b in self._pieces.feed([base, tensors[0]]):
            x, y = a.reshape(1, -1), b.reshape(1, -1)
            if round_ == 0:
                self._parts[0].append(torch.linalg.vector_norm(x, dim=1, keepdim=True))
                self._parts[1].append(torch.linalg.vector_norm(y, dim=1, keepdim=True))
            else:
                na, nb = self._norms
                self._parts[0].append(((x / na) * (y / nb)).sum(dim=1, keepdim=True))

    def finish(self, round_: int) -> None:
        import torch

        self._pieces.done()
        if not self.numel:  # nothing to reduce: apply() returns the empty tensor
            return
        if round_ == 0:
            for parts in self._parts:
                norm = torch.linalg.vector_norm(torch.stack(parts), dim=0)
                self._norms.append(torch.where(norm > self.eps, norm, 1))
        else:
            dot = torch.stack(self._parts[0]).sum(dim=0).clamp(-1, 1)
            self.coefficients = self._solve(dot)
        self._parts = [[], []]

    def _solve(self, dot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        t = torch.tensor([self.t], dtype=dot.dtype).reshape(-1, 1)
        linear = dot.abs() > self.dot_threshold
        theta = torch.acos(torch.where(linear, 0, dot))
        sin_theta = torch.sin(theta)
        return (torch.where(linear, 1 - t, torch.sin((1 - t) * theta) / sin_theta),
                torch.where(linear, t, torch.sin(t * theta) / sin_theta))

    def apply(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``s0 * v0 + s1 * v1`` (two products, then their sum) in the work dtype, in place
        on ``xs`` where they are in it, returned in the inputs' dtype."""
        if not self.numel:
            return xs[0]
        assert self.coefficients is not None, "finish() both rounds first"
        s0, s1 = (float(c) for c in self.coefficients)
        dtype = xs[0].dtype
        x, y = (v.to(work_dtype(dtype)) for v in xs)
        return x.mul_(s0).add_(y.mul_(s1)).to(dtype)


def slerp(
    t: float,
    v0: torch.Tensor,
    v1: torch.Tensor,
    *,
    dot_threshold: float = DOT_THRESHOLD,
    eps: float = EPS,
) -> torch.Tensor:
    """Spherically interpolate from ``v0`` (t=0) to ``v1`` (t=1), each taken as one vector,
    with mergekit's bytes (:class:`SlerpStats`).

    Works in place on ``v0`` and ``v1`` (they must be owned by the caller).

    >>> import torch
    >>> slerp(0.5, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    tensor([0.7071, 0.7071])
    """
    stats = SlerpStats(t, v0.numel(), dot_threshold=dot_threshold, eps=eps)
    return gather_whole(stats, [v1], v0).apply([v0, v1])


def slerp_stats(shape: tuple[int, ...], width: int, model_params: Sequence[NoParams],
                params: SlerpParams, ctx: TensorContext) -> SlerpStats:
    """:class:`SlerpStats` for merging a large tensor in row chunks."""
    return SlerpStats(params.t, math.prod(shape))


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
        assert isinstance(ctx.stats, SlerpStats)
        return ctx.stats.apply([base, other])
    return slerp(params.t, base, other)


SLERP = MergeMethod(
    name="slerp",
    summary="spherical interpolation from base_model (t=0) to one other model (t=1)",
    merge=slerp_merge,
    stats=slerp_stats,
    elementwise=True,
    params=SlerpParams,
    base="required",
    min_models=1,
    max_models=1,
)

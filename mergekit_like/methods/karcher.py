"""Karcher mean: the Riemannian (Frechet) mean of the models' directions on the unit sphere.

Following mergekit's ``karcher``, every input counts equally (``alpha_i = 1 / n``) and each
tensor is one flat vector. Tensors whose norm is at most ``tol`` take no part in the
direction; the others are normalised to ``u_i`` and their weights renormalised to ``a_i``.

    u = sum_i a_i u_i / |...|        start: the normalised mean (u_1 if it is shorter than tol)
    repeat max_iter times:
        T = sum_i a_i theta_i / sin(theta_i) (u_i - cos(theta_i) u)   (log map; terms with
                                                                       theta_i < tol skipped)
        stop if |T| < tol
        u = cos(|T|) u + sin(|T|) T / |T|;  u = u / |u|              (exp map)
    out = (sum_i alpha_i |x_i|) u          (mean norm over *all* inputs, zero ones included)

with ``theta_i = arccos(clamp(u . u_i, -1, 1))``. When every norm is at most ``tol`` the
result is zero.

Every iterate lies in the span of the inputs, so the iteration runs on the host, in float64,
over coefficients, from the inputs' Gram matrix (:mod:`~mergekit_like.methods.gram`): one
pass gathers it (in row chunks for a large tensor), and the result is ``sum_i k_i x_i``.

Base model: mergekit adds a recipe's ``base_model`` to the inputs of every method, so its
Karcher mean includes the base. We do the same: with a ``base_model`` the base is one more
equally weighted input (first, as in mergekit's input order), listed among ``models`` or not.
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


class KarcherParams(MethodParams):
    max_iter: int = Field(10, ge=0, description="maximum iterations of the mean's refinement")
    tol: float = Field(1e-5, ge=0.0, description="convergence tolerance")


def karcher_coefficients(gram: Sequence[Sequence[float]], *, max_iter: int = 10,
                         tol: float = 1e-5) -> list[float]:
    """``k`` with the Karcher mean ``= sum_i k_i x_i``, from the inputs' Gram matrix.

    >>> [round(k, 4) for k in karcher_coefficients([[4.0, 0.0], [0.0, 4.0]])]
    [0.7071, 0.7071]
    """
    n = len(gram)

    def dot(a: Sequence[float], b: Sequence[float]) -> float:
        return sum(a[i] * gram[i][j] * b[j] for i in range(n) for j in range(n) if a[i] and b[j])

    norms = [math.sqrt(max(gram[i][i], 0.0)) for i in range(n)]
    valid = [i for i in range(n) if norms[i] > tol]
    scale = sum(norm / n for norm in norms)
    if not valid:
        return [0.0] * n
    a = 1.0 / len(valid)
    units = {i: [1.0 / norms[i] if j == i else 0.0 for j in range(n)] for i in valid}
    u = [sum(a * units[i][j] for i in valid) for j in range(n)]
    u_norm = math.sqrt(max(dot(u, u), 0.0))
    u = list(units[valid[0]]) if u_norm < tol else [c / u_norm for c in u]
    for _ in range(max_iter):
        step = [0.0] * n
        for i in valid:
            cos = min(max(dot(u, units[i]), -1.0), 1.0)
            theta = math.acos(cos)
            if theta < tol:
                continue
            coef = a * theta / math.sin(theta)
            step = [s + coef * ui - coef * cos * uj
                    for s, ui, uj in zip(step, units[i], u, strict=True)]
        step_norm = math.sqrt(max(dot(step, step), 0.0))
        if step_norm < tol:
            break
        u = [math.cos(step_norm) * uj + math.sin(step_norm) / step_norm * sj
             for uj, sj in zip(u, step, strict=True)]
        u_norm = math.sqrt(max(dot(u, u), 0.0))
        if u_norm > tol:
            u = [c / u_norm for c in u]
    return [c * scale for c in u]


def with_base(tensors: Sequence[torch.Tensor], base: torch.Tensor | None) -> list[torch.Tensor]:
    """Karcher's inputs: the base (first, when given) and the models' tensors."""
    return [base, *tensors] if base is not None else list(tensors)


def karcher_mean(
    tensors: Sequence[torch.Tensor], *, max_iter: int = 10, tol: float = 1e-5,
    kernels: Kernels | None = None,
) -> torch.Tensor:
    """Equal-weight Karcher mean of the tensors' directions, scaled by their mean norm.

    Works in place on ``tensors`` (they must be owned by the caller). ``kernels``: as for
    :class:`~.gram.GramStats`.

    >>> import torch
    >>> karcher_mean([torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])])
    tensor([1.4142, 1.4142])
    """
    if len(tensors) == 1:
        return tensors[0]
    stats = GramStats(tensors[0].numel(), lambda gram: karcher_coefficients(
        gram, max_iter=max_iter, tol=tol), with_base, kernels)
    return gather_whole(stats, tensors, None).apply(tensors)


def karcher_stats(shape: tuple[int, ...], width: int, model_params: Sequence[NoParams],
                  params: KarcherParams, ctx: TensorContext) -> GramStats:
    """The Gram pass (:class:`~.gram.GramStats`) for a large tensor merged in row chunks."""
    return GramStats(math.prod(shape), lambda gram: karcher_coefficients(
        gram, max_iter=params.max_iter, tol=params.tol), with_base, ctx.kernels)


def karcher_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[NoParams],
    params: KarcherParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """Karcher mean of the models (and of the base model, when the recipe names one)."""
    inputs = with_base(tensors, base)
    if ctx.stats is None or len(inputs) == 1:
        return karcher_mean(inputs, max_iter=params.max_iter, tol=params.tol,
                            kernels=ctx.kernels)
    assert isinstance(ctx.stats, GramStats)
    return ctx.stats.apply(inputs)


KARCHER = MergeMethod(
    name="karcher",
    summary="Karcher (Riemannian) mean of the models on the hypersphere, equal weights",
    merge=karcher_merge,
    stats=karcher_stats,
    kernels=True,
    elementwise=True,
    params=KarcherParams,
    base="optional",
    min_models=1,
)

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

Base model: mergekit adds a recipe's ``base_model`` to the inputs of every method, so its
Karcher mean includes the base. We do the same: with a ``base_model`` the base is one more
equally weighted input (first, as in mergekit's input order), listed among ``models`` or not.
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


class KarcherParams(MethodParams):
    max_iter: int = Field(10, ge=0, description="maximum iterations of the mean's refinement")
    tol: float = Field(1e-5, ge=0.0, description="convergence tolerance")


def karcher_mean(
    tensors: Sequence[torch.Tensor], *, max_iter: int = 10, tol: float = 1e-5
) -> torch.Tensor:
    """Equal-weight Karcher mean of the tensors' directions, scaled by their mean norm.

    >>> import torch
    >>> karcher_mean([torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])])
    tensor([1.4142, 1.4142])
    """
    import torch

    if len(tensors) == 1:
        return tensors[0]
    alpha = 1.0 / len(tensors)
    norms = [stable_norm(x).item() for x in tensors]
    valid = [(x, n) for x, n in zip(tensors, norms, strict=True) if n > tol]
    scale = sum(alpha * n for n in norms)
    if not valid:
        return torch.zeros_like(tensors[0])
    a = 1.0 / len(valid)
    units = [x.div_(n).reshape(-1) for x, n in valid]
    u = torch.zeros_like(units[0])
    for ui in units:
        u.add_(ui, alpha=a)
    u_norm = stable_norm(u).item()
    u = units[0].clone() if u_norm < tol else u.div_(u_norm)
    for _ in range(max_iter):
        step = torch.zeros_like(u)
        for ui in units:
            dot = min(max(stable_sum(u * ui).item(), -1.0), 1.0)
            theta = math.acos(dot)
            if theta < tol:
                continue
            coef = a * theta / math.sin(theta)
            step.add_(ui, alpha=coef).add_(u, alpha=-coef * dot)
        step_norm = stable_norm(step).item()
        if step_norm < tol:
            break
        u = u.mul_(math.cos(step_norm)).add_(step, alpha=math.sin(step_norm) / step_norm)
        u_norm = stable_norm(u).item()
        if u_norm > tol:
            u.div_(u_norm)
    return u.mul_(scale).reshape(tensors[0].shape)


def karcher_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[NoParams],
    params: KarcherParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """Karcher mean of the models (and of the base model, when the recipe names one)."""
    inputs = [base, *tensors] if base is not None else list(tensors)
    return karcher_mean(inputs, max_iter=params.max_iter, tol=params.tol)


KARCHER = MergeMethod(
    name="karcher",
    summary="Karcher (Riemannian) mean of the models on the hypersphere, equal weights",
    merge=karcher_merge,
    params=KarcherParams,
    base="optional",
    min_models=1,
)

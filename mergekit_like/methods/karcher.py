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

mergekit's bytes: mergekit iterates on whole tensors, rounding every iterate, with
whole-tensor reductions whose rounding depends on the tensor (its length, the thread count),
so :func:`karcher_whole` makes mergekit's calls on the whole tensors: every tensor is
merged whole (not in row chunks; the memory mergekit needs too).

Base model: mergekit adds a recipe's ``base_model`` to the inputs of every method, so its
Karcher mean includes the base. We do the same: with a ``base_model`` the base is one more
equally weighted input (first, as in mergekit's input order), listed among ``models`` or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.pieces import work_dtype
from mergekit_like.methods.spec import (
    MergeMethod,
    MethodParams,
    NoParams,
    TensorContext,
)

if TYPE_CHECKING:
    import torch

    from mergekit_like.native.sphere import SpherePass


class KarcherParams(MethodParams):
    max_iter: int = Field(10, ge=0, description="maximum iterations of the mean's refinement")
    tol: float = Field(1e-5, ge=0.0, description="convergence tolerance")


def _unit(x: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    return (x / norm).to(x.dtype)


def _norm(x: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.linalg.vector_norm(x.to(work_dtype(x.dtype)))


def karcher_whole(tensors: Sequence[torch.Tensor], *, max_iter: int = 10,
                  tol: float = 1e-5, sphere: SpherePass | None = None) -> torch.Tensor:
    """The iteration above on whole tensors, in mergekit's torch calls and order: norms in
    float32 (float64 for float64 inputs), units and iterates in the tensors' dtype, the
    dot products by ``torch.dot``, the weights as Python floats. A new tensor.

    ``sphere``: the C kernels that run the log map's accumulation and the exp map each in
    one pass with the torch operations' roundings (:mod:`mergekit_like.native.sphere`;
    same bytes, float32 and bfloat16 on the CPU); None: torch's operations."""
    import torch

    alpha = 1.0 / len(tensors)
    norms = [_norm(x) for x in tensors]
    units = [torch.zeros_like(x) if n.item() == 0.0 else _unit(x, n)
             for x, n in zip(tensors, norms, strict=True)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return sum(x * 0 for x in tensors)  # type: ignore[return-value]
    a = alpha / sum(alpha for _ in valid)
    valid_units = [units[i] for i in valid]
    mean = torch.zeros_like(valid_units[0])
    for u in valid_units:
        mean += a * u
    mean_norm = _norm(mean)
    mean = valid_units[0].clone() if mean_norm.item() < tol else _unit(mean, mean_norm)
    fused = sphere if sphere is not None and sphere.supports(mean, *valid_units) else None
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for u in valid_units:
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            coef = a * (theta / torch.sin(theta))
            if fused is not None:  # the same roundings, one pass
                fused.tangent_add(tangent, u, mean, dot.item(), coef.item())
            else:
                tangent += coef * (u - dot * mean)
        tangent_norm = _norm(tangent)
        if tangent_norm.item() < tol:
            break
        cos, sin = torch.cos(tangent_norm), torch.sin(tangent_norm)
        if fused is not None:
            # torch rounds a float32 0-dim first operand to the tensor's dtype (a second
            # one, the divisor, it keeps)
            fused.exp_step(mean, tangent, cos.to(mean.dtype).item(),
                           sin.to(mean.dtype).item(), tangent_norm.item())
        else:
            mean = (cos * mean + sin * (tangent / tangent_norm)).to(mean.dtype)
        unit_norm = _norm(mean)
        if unit_norm.item() > tol:
            mean = _unit(mean, unit_norm)
    return sum(alpha * n for n in norms) * mean


def with_base(tensors: Sequence[torch.Tensor], base: torch.Tensor | None) -> list[torch.Tensor]:
    """Karcher's inputs: the base (first, when given) and the models' tensors."""
    return [base, *tensors] if base is not None else list(tensors)


def karcher_mean(tensors: Sequence[torch.Tensor], *, max_iter: int = 10,
                 tol: float = 1e-5, sphere: SpherePass | None = None) -> torch.Tensor:
    """Equal-weight Karcher mean of the tensors' directions, scaled by their mean norm
    (:func:`karcher_whole`; one tensor is returned as it is).

    >>> import torch
    >>> karcher_mean([torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])])
    tensor([1.4142, 1.4142])
    """
    if len(tensors) == 1:
        return tensors[0]
    return karcher_whole(tensors, max_iter=max_iter, tol=tol, sphere=sphere)


def karcher_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[NoParams],
    params: KarcherParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """Karcher mean of the models (and of the base model, when the recipe names one)."""
    return karcher_mean(with_base(tensors, base), max_iter=params.max_iter, tol=params.tol,
                        sphere=ctx.kernels.sphere() if ctx is not None else None)


KARCHER = MergeMethod(
    name="karcher",
    summary="Karcher (Riemannian) mean of the models on the hypersphere, equal weights",
    merge=karcher_merge,
    params=KarcherParams,
    base="optional",
    min_models=1,
)

"""Model Stock (Jang et al., 2024): move from the base toward the fine-tunes' average by an
amount set by how much the fine-tunes agree.

With ``N >= 2`` fine-tunes and their task vectors ``delta_i = x_i - base``:

    cos = mean over pairs i < j of cos(delta_i, delta_j)      (clamped to [-1, 1])
    t = N * cos / (1 + (N - 1) * cos)
    out = t * mean_i(x_i) + (1 - t) * base  =  base + t * mean_i(delta_i)

The paper uses one angle for two fine-tunes; for more, mergekit (and this) average the
pairwise cosines. ``filter_wise: true`` computes ``cos`` and ``t`` per row (along the last
dimension; a 1-D tensor is one row) instead of over the whole tensor. Norm products are
clamped below at 1e-6, as mergekit does, so an unchanged tensor stays at the base. Where
``1 + (N - 1) cos`` is 0 (fine-tunes pointing in opposite directions) ``t`` is undefined and
the merge stops with an error naming the tensor; mergekit would write inf/NaN there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.reductions import stable_norm, stable_sum
from mergekit_like.methods.spec import MergeMethod, MethodParams, NoParams, TensorContext
from mergekit_like.methods.task_arithmetic import generalized_task_arithmetic

if TYPE_CHECKING:
    import torch


class ModelStockParams(MethodParams):
    filter_wise: bool = Field(False, description="one interpolation ratio per row, not per tensor")


def interpolation_ratio(deltas: Sequence[torch.Tensor], filter_wise: bool) -> torch.Tensor:
    """Model Stock's ``t`` from the mean pairwise cosine of the task vectors.

    A 0-d tensor, or with ``filter_wise`` one value per row shaped ``[..., 1]``.
    """
    import torch

    dim = -1 if filter_wise else None
    norms = [stable_norm(d, dim) for d in deltas]
    cosines = []
    for i, a in enumerate(deltas):
        for j in range(i + 1, len(deltas)):
            dot = stable_sum(a * deltas[j], dim)
            cos = dot / (norms[i] * norms[j]).clamp(min=1e-6)
            cosines.append(cos.clamp(-1.0, 1.0))
    cos = torch.stack(cosines).mean(dim=0)
    n = len(deltas)
    denominator = 1 + (n - 1) * cos
    if bool((denominator.abs() < 1e-6).any()):
        raise ValueError("the fine-tunes' task vectors point in opposite directions "
                         "(1 + (N - 1) cos is 0); model_stock is undefined here")
    t = n * cos / denominator
    return t.unsqueeze(-1) if filter_wise else t


def model_stock_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[NoParams],
    params: ModelStockParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """``base + t * mean_i(x_i - base)`` with ``t`` from the angle between the fine-tunes."""
    if base is None:
        raise ValueError("model_stock needs a base_model")
    filter_wise = params.filter_wise and base.dim() > 0
    t = interpolation_ratio([x - base for x in tensors], filter_wise)
    return generalized_task_arithmetic(tensors, base, [1.0] * len(tensors), normalize=True,
                                       lambda_=t)


MODEL_STOCK = MergeMethod(
    name="model_stock",
    summary="Model Stock: base + t * mean task vector, t from the angle between the fine-tunes",
    merge=model_stock_merge,
    params=ModelStockParams,
    base="required",
    min_models=2,
)

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

Large tensors are merged in row chunks: the norms and dot products are summed over the
whole tensor first (:class:`ModelStockStats`), with the same bytes as merging it whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.reductions import BlockSums, stable_norm, stable_sum
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
    if not filter_wise:
        stats = ModelStockStats(len(deltas), deltas[0].numel())
        stats.observe_deltas(deltas)
        stats.finish(0)
        assert stats.t is not None
        return stats.t
    norms = [stable_norm(d, -1) for d in deltas]
    dots = {(i, j): stable_sum(deltas[i] * deltas[j], -1)
            for i in range(len(deltas)) for j in range(i + 1, len(deltas))}
    return _ratio(norms, dots).unsqueeze(-1)


def _ratio(norms: list[torch.Tensor], dots: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
    """``t = N cos / (1 + (N - 1) cos)`` from the norms and pairwise dot products."""

    cosines = [(dot / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1.0, 1.0)
               for (i, j), dot in dots.items()]
    # the mean as additions in order and a true division, the same on every device
    cos = sum(cosines[1:], start=cosines[0]) / cosines[0].new_full((), len(cosines))
    n = len(norms)
    denominator = 1 + (n - 1) * cos
    if bool((denominator.abs() < 1e-6).any()):
        raise ValueError("the fine-tunes' task vectors point in opposite directions "
                         "(1 + (N - 1) cos is 0); model_stock is undefined here")
    return n * cos / denominator


class ModelStockStats:
    """The task vectors' norms and pairwise dot products over a whole tensor, chunk by chunk.

    Implements :class:`~mergekit_like.methods.spec.TensorStats` (one round): after it, ``t``
    holds the tensor's interpolation ratio, so the executor can merge a large tensor in row
    chunks with the same bytes as whole (``filter_wise`` needs no pass: its ratio is per row).
    """

    rounds = 1

    def __init__(self, n_models: int, numel: int) -> None:
        self._squares = [BlockSums(numel) for _ in range(n_models)]
        self._dots = {(i, j): BlockSums(numel)
                      for i in range(n_models) for j in range(i + 1, n_models)}
        self.t: torch.Tensor | None = None

    def wants(self, round_: int) -> bool:
        """Every round is needed."""
        return True

    def observe(self, round_: int, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                start: int) -> None:
        assert base is not None
        self.observe_deltas([x - base for x in tensors])

    def observe_deltas(self, deltas: Sequence[torch.Tensor]) -> None:
        """Take the next chunk of the task vectors."""
        for d, sums in zip(deltas, self._squares, strict=True):
            sums.add(d * d)
        for (i, j), sums in self._dots.items():
            sums.add(deltas[i] * deltas[j])

    def finish(self, round_: int) -> None:
        self.t = _ratio([s.total().sqrt() for s in self._squares],
                        {key: s.total() for key, s in self._dots.items()})


def model_stock_stats(shape: tuple[int, ...], width: int, model_params: Sequence[NoParams],
                      params: ModelStockParams, ctx: TensorContext) -> ModelStockStats | None:
    """:class:`ModelStockStats` for a tensor merged in row chunks (None with filter_wise)."""
    if params.filter_wise and len(shape) > 0:
        return None
    return ModelStockStats(len(model_params), math.prod(shape))


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
    if ctx.stats is not None:
        assert isinstance(ctx.stats, ModelStockStats) and ctx.stats.t is not None
        t = ctx.stats.t
    else:
        t = interpolation_ratio([x - base for x in tensors], filter_wise)
    return generalized_task_arithmetic(tensors, base, [1.0] * len(tensors), normalize=True,
                                       lambda_=t)


MODEL_STOCK = MergeMethod(
    name="model_stock",
    summary="Model Stock: base + t * mean task vector, t from the angle between the fine-tunes",
    merge=model_stock_merge,
    stats=model_stock_stats,
    elementwise=True,
    params=ModelStockParams,
    base="required",
    min_models=2,
)

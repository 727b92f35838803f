"""Model Stock (Jang et al., 2024): move from the base toward the fine-tunes' average by an
amount set by how much the fine-tunes agree.

With ``N >= 2`` fine-tunes and their task vectors ``delta_i = x_i - base``:

    cos = mean over pairs i < j of cos(delta_i, delta_j)      (clamped to [-1, 1])
    t = N * cos / (1 + (N - 1) * cos)
    out = t * mean_i(x_i) + (1 - t) * base

The paper uses one angle for two fine-tunes; for more, mergekit (and this) average the
pairwise cosines. ``filter_wise: true`` computes ``cos`` and ``t`` per row (along the last
dimension; a 1-D tensor is one row) instead of over the whole tensor. Norm products are
clamped below at 1e-6, as mergekit does, so an unchanged tensor stays at the base. Where
``|1 + (N - 1) cos| < 1e-6`` (fine-tunes pointing in opposite directions) ``t`` is
undefined; mergekit 0.1.5 keeps the base there (``t = 0``), and so does this.

Every step is mergekit's torch call in its order and in the compute dtype, the norms and
dot products included (``torch.norm``, ``(a * b).sum(dim=-1)``), so the bytes are
mergekit's; like mergekit's, they follow the CPU's vector width and, for a whole-tensor
sum over 32768 entries, torch's thread count (``-j``), and differ on a GPU.

Large tensors are merged in row chunks: the task vectors are gathered whole first
(:class:`ModelStockStats`, one tensor per model held until the ratio is known, as mergekit
holds them), with the same bytes as merging whole. ``filter_wise`` ratios are per row, so
row chunks need no gathering.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.reductions import Gathered
from mergekit_like.methods.spec import MergeMethod, MethodParams, NoParams, TensorContext

if TYPE_CHECKING:
    import torch


class ModelStockParams(MethodParams):
    filter_wise: bool = Field(False, description="one interpolation ratio per row, not per tensor")


def interpolation_ratio(deltas: Sequence[torch.Tensor], filter_wise: bool) -> torch.Tensor:
    """Model Stock's ``t`` from the mean pairwise cosine of the task vectors, in mergekit's
    torch calls: shaped ``[1]`` (over the whole flat tensor), or with ``filter_wise`` one
    value per row shaped ``[..., 1]`` (a 1-D tensor is one row: the same as the whole);
    in the task vectors' dtype."""
    if filter_wise and deltas[0].dim() > 1:
        return _ratio(list(deltas))
    return _ratio([d.reshape(-1) for d in deltas])


def _ratio(offsets: list[torch.Tensor]) -> torch.Tensor:
    """``t = N cos / (1 + (N - 1) cos)`` along the last dimension, mergekit 0.1.5's calls in
    its order: ``torch.norm`` and ``sum(dim=-1)`` per pair, the cosine clamped, the pairs'
    ``stack(...).mean(0)``, and ``t = 0`` where the denominator is below 1e-6."""
    import torch

    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(offsets)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    return torch.where(singular, torch.zeros_like(cos), (n * cos) / safe)


class ModelStockStats:
    """The task vectors of a whole tensor, gathered chunk by chunk, for its ratio.

    Implements :class:`~mergekit_like.methods.spec.TensorStats` (one round): after it, ``t``
    holds the tensor's interpolation ratio, so the executor can merge a large tensor in row
    chunks with the same bytes as whole (``filter_wise`` needs no pass: its ratio is per
    row). mergekit's ``torch.norm`` and ``sum`` of the whole flat task vectors have bytes
    no sum of chunks reproduces, so the task vectors are held whole until :meth:`finish`
    (one tensor per model in the compute dtype, freed after it).
    """

    rounds = 1

    def __init__(self, n_models: int, numel: int) -> None:
        self._deltas = [Gathered(numel) for _ in range(n_models)]
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
        for d, gathered in zip(deltas, self._deltas, strict=True):
            gathered.add(d)

    def finish(self, round_: int) -> None:
        self.t = _ratio([g.whole() for g in self._deltas])


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
    """``t * mean_i(x_i) + (1 - t) * base`` with ``t`` from the angle between the fine-tunes
    (mergekit's arrangement: the mean as ``sum(x_i) / N``, added in order)."""
    if base is None:
        raise ValueError("model_stock needs a base_model")
    filter_wise = params.filter_wise and base.dim() > 0
    if ctx.stats is not None:
        assert isinstance(ctx.stats, ModelStockStats) and ctx.stats.t is not None
        t = ctx.stats.t
    else:
        t = interpolation_ratio([x - base for x in tensors], filter_wise)
    average = tensors[0] + 0  # Python's sum() starts at 0 (turning -0.0 into 0.0)
    for x in tensors[1:]:
        average.add_(x)
    average.div_(len(tensors))
    return average.mul_(t).add_((1 - t) * base)


MODEL_STOCK = MergeMethod(
    name="model_stock",
    summary="Model Stock: t * mean model + (1 - t) * base, t from the angle between the fine-tunes",
    merge=model_stock_merge,
    stats=model_stock_stats,
    held=1,  # each model's task vector, for torch's own sums
    elementwise=True,
    params=ModelStockParams,
    base="required",
    min_models=2,
)

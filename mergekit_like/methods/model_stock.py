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

Every step is mergekit's torch operation in its order and in the compute dtype (for
bfloat16/float16, the norms and dot products accumulate in float32 and are rounded once,
as ``torch.norm`` and ``torch.sum`` do). The norms and dot products themselves are summed
in :func:`~.reductions.stable_sum`'s fixed order, not ``torch.sum``'s: that order does not
depend on the thread count or the device and splits into row chunks (mergekit's
``torch.norm``/``sum`` orders lanes by the CPU's vector width and, above 32768 entries, by
the thread count), so at float32 ``t`` can differ from mergekit's in its last bit.

Large tensors are merged in row chunks: the norms and dot products are summed over the
whole tensor first (:class:`ModelStockStats`), with the same bytes as merging it whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.reductions import BlockSums, stable_sum
from mergekit_like.methods.spec import MergeMethod, MethodParams, NoParams, TensorContext

if TYPE_CHECKING:
    import torch


class ModelStockParams(MethodParams):
    filter_wise: bool = Field(False, description="one interpolation ratio per row, not per tensor")


def interpolation_ratio(deltas: Sequence[torch.Tensor], filter_wise: bool) -> torch.Tensor:
    """Model Stock's ``t`` from the mean pairwise cosine of the task vectors.

    A 0-d tensor, or with ``filter_wise`` one value per row shaped ``[..., 1]``; in the
    task vectors' dtype.
    """
    if not filter_wise:
        stats = ModelStockStats(len(deltas), deltas[0].numel())
        stats.observe_deltas(deltas)
        stats.finish(0)
        assert stats.t is not None
        return stats.t
    dtype = deltas[0].dtype
    acc = _accumulator(dtype)
    norms = [_sqrt(stable_sum(d.to(acc).square(), -1), dtype) for d in deltas]
    dots = {(i, j): stable_sum((deltas[i] * deltas[j]).to(acc), -1).to(dtype)
            for i in range(len(deltas)) for j in range(i + 1, len(deltas))}
    return _ratio(norms, dots).unsqueeze(-1)


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    """What torch's norms and sums accumulate ``dtype`` in: float32 for 16-bit floats."""
    import torch

    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _sqrt(squares: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``torch.norm``'s square root: correctly rounded (its reduction ends in ``std::sqrt``;
    torch's vectorised ``sqrt`` of a float32 tensor is not always), then in ``dtype``."""
    import torch

    return squares.to(torch.float64).sqrt().to(squares.dtype).to(dtype)


def _ratio(norms: list[torch.Tensor], dots: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
    """``t = N cos / (1 + (N - 1) cos)`` from the norms and pairwise dot products, with
    mergekit's operations (``t = 0`` where the denominator is below 1e-6)."""
    import torch

    cosines = [(dot / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1)
               for (i, j), dot in dots.items()]
    # torch.stack(cosines).mean(0): added in order, divided by the count (16-bit floats in
    # float32, rounded once); written out so that every device adds in this order
    dtype = cosines[0].dtype
    total = cosines[0].to(_accumulator(dtype))
    for c in cosines[1:]:
        total = total + c
    cos = (total / len(cosines)).to(dtype)
    n = len(norms)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    return torch.where(singular, torch.zeros_like(cos), (n * cos) / safe)


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
        self._dtype: torch.dtype | None = None

    def wants(self, round_: int) -> bool:
        """Every round is needed."""
        return True

    def observe(self, round_: int, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                start: int) -> None:
        assert base is not None
        self.observe_deltas([x - base for x in tensors])

    def observe_deltas(self, deltas: Sequence[torch.Tensor]) -> None:
        """Take the next chunk of the task vectors."""
        self._dtype = deltas[0].dtype
        acc = _accumulator(self._dtype)
        for d, sums in zip(deltas, self._squares, strict=True):
            sums.add(d.to(acc).square())
        for (i, j), sums in self._dots.items():
            sums.add((deltas[i] * deltas[j]).to(acc))

    def finish(self, round_: int) -> None:
        dtype = self._dtype
        self.t = _ratio([_sqrt(s.total(), dtype) for s in self._squares],
                        {key: s.total().to(dtype) for key, s in self._dots.items()})


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
    elementwise=True,
    params=ModelStockParams,
    base="required",
    min_models=2,
)

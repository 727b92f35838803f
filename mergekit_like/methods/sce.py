"""SCE (Wan et al., 2024, FuseChat): Select, Calculate, Erase.

- Select: keep the ``select_topk`` fraction of positions where the task vectors vary most
  across models (population variance, over positions of non-zero variance); the others
  are zeroed in every task vector. ``select_topk: 1`` (mergekit's default) keeps all.
- Calculate: each model's weight is the mean square of its selected task vector,
  normalised so the weights sum to 1.
- Erase: the sign of each entry is elected by the plain sum of the task vectors; entries
  of the minority sign are dropped, and the rest averaged with the weights.

As mergekit's ``sce``: no per-model parameters (the weights come from the data).

A large tensor is merged in row chunks after statistics passes over the same chunks
(:class:`SceStats`): the count of positions of non-zero variance, a rank window over the
variances (:class:`~mergekit_like.methods.rank_select.RankWindow`, ties ranked by position),
and the selected task vectors' energies. A whole tensor takes the same passes as one chunk,
so both give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.radix import radix_rounds
from mergekit_like.methods.rank_select import RankWindow
from mergekit_like.methods.reductions import BlockSums
from mergekit_like.methods.spec import (
    MergeMethod,
    MethodParams,
    NoParams,
    TensorContext,
    gather_whole,
)

if TYPE_CHECKING:
    import torch


class SceParams(MethodParams):
    select_topk: float = Field(1.0, ge=0.0, le=1.0,
                               description="fraction of highest-variance positions kept")
    int8_mask: bool = Field(False, description="accepted for mergekit compatibility; no effect")


def variance(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Population variance over the models at each position, in a fixed order of
    elementwise operations (the same bytes for any chunk and on any device)."""
    n = deltas[0].new_full((), len(deltas))
    mean = deltas[0].clone()
    for d in deltas[1:]:
        mean.add_(d)
    mean.div_(n)
    var = (deltas[0] - mean).square_()
    for d in deltas[1:]:
        var.add_((d - mean).square_())
    return var.div_(n)


class SceStats:
    """SCE's figures over a whole tensor, gathered chunk by chunk (a ``TensorStats``).

    Rounds, with ``select_topk`` below 1: the positions of non-zero variance are counted;
    the radix rounds of a :class:`RankWindow` keeping the top ``int(select_topk * count)``
    variances; then the energies ``mean(selected delta_i ** 2)``. With ``select_topk: 1``,
    only the energies.
    """

    def __init__(self, numel: int, n_models: int, fraction: float, width: int) -> None:
        self.numel, self.fraction, self.width = numel, fraction, width
        self._rank_rounds = radix_rounds(width) if fraction < 1.0 else 0
        self._first_energy = 1 + self._rank_rounds if fraction < 1.0 else 0
        self.rounds = self._first_energy + 1
        self._nonzero = 0
        self.window: RankWindow | None = None
        self._energy = [BlockSums(numel) for _ in range(n_models)]
        self.weights: list[float] | None = None

    @classmethod
    def whole(cls, tensors: Sequence[torch.Tensor], base: torch.Tensor,
              fraction: float) -> SceStats:
        """Gathered from whole tensors: the same passes over one chunk."""
        import torch

        return gather_whole(cls(base.numel(), len(tensors), fraction,
                                torch.finfo(base.dtype).bits), tensors, base)

    def wants(self, round_: int) -> bool:
        """Whether round ``round_`` may still be needed (once not, it stays so): a rank
        round is not once the window (made after the count) says so."""
        if 1 <= round_ < self._first_energy and self.window is not None:
            return self.window.wants(round_ - 1)
        return True

    def select(self, deltas: list[torch.Tensor]) -> list[torch.Tensor]:
        """The next chunk's task vectors with the unselected positions zeroed (in place)."""
        if self.window is None:
            return deltas
        keep = self.window.mask(variance(deltas))
        return [d.mul_(keep) for d in deltas]

    def observe(self, round_: int, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                start: int) -> None:
        import torch

        assert base is not None
        deltas = [x - base for x in tensors]
        if round_ < self._first_energy:
            var = variance(deltas)
            if round_ == 0:
                self._nonzero += int(torch.count_nonzero(var))
            else:
                assert self.window is not None
                self.window.observe(round_ - 1, var)
            return
        for sums, d in zip(self._energy, self.select(deltas), strict=True):
            sums.add(d * d)

    def finish(self, round_: int) -> None:
        if round_ < self._first_energy:
            if round_ == 0:
                k = int(self.fraction * self._nonzero)
                self.window = RankWindow(self.numel, self.numel - k, self.numel, self.width,
                                         ties="descending")
            else:
                assert self.window is not None
                self.window.finish(round_ - 1)
            return
        energy = [float(s.total()) / max(1, self.numel) for s in self._energy]
        total = sum(energy)
        self.weights = ([e / total for e in energy] if total else
                        [1.0 / len(energy)] * len(energy))
        if self.window is not None:
            self.window.restart()  # the merge pass masks the chunks again, from the first


def sce_stats(shape: tuple[int, ...], width: int, model_params: Sequence[NoParams],
              params: SceParams, ctx: TensorContext) -> SceStats:
    """:class:`SceStats` for a large tensor merged in row chunks."""
    return SceStats(math.prod(shape), len(model_params), params.select_topk, width)


def sce_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[NoParams],
    params: SceParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """SCE: variance selection, energy weights, sign election, weighted disjoint mean."""
    if base is None:
        raise ValueError("sce needs a base_model")
    stats = ctx.stats
    if not isinstance(stats, SceStats):
        stats = SceStats.whole(tensors, base, params.select_topk)
    assert stats.weights is not None
    deltas = stats.select([x.sub_(base) for x in tensors])
    return ctx.kernels.mix_deltas(deltas, base, stats.weights, 1.0, "sum_unweighted",
                                  normalize=True)


SCE = MergeMethod(
    name="sce",
    summary="SCE: select high-variance entries, weight models by energy, erase minority signs",
    merge=sce_merge,
    stats=sce_stats,
    elementwise=True,
    params=SceParams,
    base="required",
)

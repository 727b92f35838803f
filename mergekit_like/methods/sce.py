"""SCE (Wan et al., 2024, FuseChat): Select, Calculate, Erase.

- Select: keep the ``select_topk`` fraction of positions where the task vectors vary most
  across models (population variance, over positions of non-zero variance); the others
  are zeroed in every task vector. ``select_topk: 1`` (mergekit's default) keeps all.
- Calculate: each model's weight is the mean square of its selected task vector,
  normalised so the weights sum to 1.
- Erase: the sign of each entry is elected by the plain sum of the task vectors; entries
  of the minority sign are dropped, and the rest averaged with the weights.

As mergekit's ``sce``: no per-model parameters (the weights come from the data).

Rounding follows mergekit's torch ops in the compute dtype: the variance is
``torch.var(unbiased=False)``'s (Welford's update in float64, rounded once), each weight is
``mean(delta_i ** 2)`` divided by the ``.item()`` of the weights' ``torch.sum``, and the
weighted sums over the models accumulate as ``torch.sum(dim=0)`` does (float32 for 16-bit
floats). The energies are mergekit's own torch calls, so their bytes follow the CPU's
vector width and torch's thread count as mergekit's do, and differ on a GPU.

A large tensor is merged in row chunks after statistics passes over the same chunks
(:class:`SceStats`): the count of positions of non-zero variance, a rank window over the
variances (:class:`~mergekit_like.methods.rank_select.RankWindow`, equal variances at the
cut kept as torch's CPU ``topk`` keeps them),
and the selected task vectors' energies. mergekit takes the energies with torch's own sums
over the stacked task vectors, whose bytes no sum of chunks reproduces, so the energy pass
gathers the selected task vectors whole (one tensor per model in the compute dtype, as
mergekit holds them) and makes mergekit's calls. A whole tensor takes the same passes as
one chunk, so both give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.radix import radix_rounds
from mergekit_like.methods.rank_select import RankWindow
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
    """Population variance over the models at each position: the bytes of
    ``torch.var(torch.stack(deltas), dim=0, unbiased=False)`` on the CPU (Welford's update
    in float64, rounded to float32, then to the deltas' dtype), as elementwise operations
    (the same bytes for any chunk and on any device)."""
    import torch

    mean = torch.zeros_like(deltas[0], dtype=torch.float64)
    m2 = torch.zeros_like(mean)
    for n, d in enumerate(deltas, start=1):
        x = d.to(torch.float64)
        step = x - mean
        mean.add_(step / n)
        m2.add_(step * (x - mean))
    return m2.div_(len(deltas)).to(torch.float32).to(deltas[0].dtype)


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    """What torch's sums accumulate ``dtype`` in: float32 for 16-bit floats."""
    import torch

    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def energy_weights(tvs: torch.Tensor) -> torch.Tensor:
    """mergekit's ``sce_weight`` of the selected task vectors stacked ``[model, ...]``:
    each one's ``square().mean()`` (one row sum each, in torch's order), divided by the
    ``.item()`` of their ``torch.sum`` (uniform when that sum is below 1e-6); one per
    model, in the task vectors' dtype."""
    import torch

    weights = tvs.square().reshape(tvs.shape[0], -1).mean(dim=1)
    total = torch.sum(weights).item()
    if abs(total) < 1e-6:
        return torch.ones_like(weights) / weights.shape[0]
    return weights / total


def mix(deltas: Sequence[torch.Tensor], base: torch.Tensor,
        weights: torch.Tensor) -> torch.Tensor:
    """SCE's erase and mean, mergekit's ops in order: the sign of the summed task vectors
    elected (ties to +), each weight kept where its task vector agrees, ``sum(d_i * w_i)``
    divided by the kept weights' sum clamped below at 1e-6, added to the base."""
    import torch

    dtype = base.dtype
    acc = _accumulator(dtype)
    total = deltas[0].to(acc)
    for d in deltas[1:]:
        total = total + d
    majority = torch.where(total.to(dtype) >= 0, 1.0, -1.0).to(dtype)
    merged = divisor = None
    for i, d in enumerate(deltas):
        kept = weights[i] * (d.sign() == majority)
        term = (d * kept).to(acc)
        merged = term if merged is None else merged.add_(term)
        divisor = kept.to(acc) if divisor is None else divisor.add_(kept)
    assert merged is not None and divisor is not None
    return base + merged.to(dtype) / divisor.to(dtype).clamp(min=1e-6)


class SceStats:
    """SCE's figures over a whole tensor, gathered chunk by chunk (a ``TensorStats``).

    Rounds, with ``select_topk`` below 1: the positions of non-zero variance are counted;
    the radix rounds of a :class:`RankWindow` keeping the top ``int(select_topk * count)``
    variances, and its tie round (wanted only where the cut falls among equal variances:
    the whole tensor's variance bit patterns gathered, and of the equal ones those kept
    that torch's CPU ``topk`` keeps, as mergekit selects); then the energies
    ``mean(selected delta_i ** 2)``. With ``select_topk: 1``, only the energies.
    """

    def __init__(self, numel: int, n_models: int, fraction: float, width: int) -> None:
        self.numel, self.fraction, self.width = numel, fraction, width
        # the window's radix rounds, and its tie replay round for floats up to 32 bits
        self._rank_rounds = radix_rounds(width) + int(width <= 32) if fraction < 1.0 else 0
        self._first_energy = 1 + self._rank_rounds if fraction < 1.0 else 0
        self.rounds = self._first_energy + 1
        self._nonzero = 0
        self.window: RankWindow | None = None
        self._tvs: torch.Tensor | None = None  # the selected task vectors, [model, entry]
        self.weights: torch.Tensor | None = None  # one per model, in the compute dtype

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
        selected = self.select(deltas)
        if self._tvs is None:
            self._tvs = base.new_empty((len(selected), self.numel))
        n = selected[0].numel()
        for row, d in zip(self._tvs, selected, strict=True):
            row[start:start + n].copy_(d.reshape(-1))

    def finish(self, round_: int) -> None:
        if round_ < self._first_energy:
            if round_ == 0:
                k = int(self.fraction * self._nonzero)
                self.window = RankWindow(self.numel, self.numel - k, self.numel, self.width,
                                         ties="cpu_topk")
            else:
                assert self.window is not None
                self.window.finish(round_ - 1)
            return
        assert self._tvs is not None
        tvs, self._tvs = self._tvs, None
        self.weights = energy_weights(tvs)
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
    return mix(deltas, base, stats.weights.to(base.device))


SCE = MergeMethod(
    name="sce",
    summary="SCE: select high-variance entries, weight models by energy, erase minority signs",
    merge=sce_merge,
    stats=sce_stats,
    held=1,  # each model's task vector, for torch's own sums
    elementwise=True,
    params=SceParams,
    base="required",
)

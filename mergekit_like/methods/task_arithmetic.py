"""The task-arithmetic family: one implementation, many methods.

Every method of the family is :func:`generalized_task_arithmetic` with options:

    delta_i = x_i - base                                   (task vectors)
    delta_i = sparsify(delta_i, trim_i)                    (ties, dare, breadcrumbs, della)
    delta_i = delta_i * select                             (sce: high-variance positions)
    d_i = w_i * delta_i                                    (sce: w_i from the deltas' energy)
    keep_i = sign(d_i) == elected sign                     (the *_ties methods, della, sce)
    mixed = sum_i keep_i * d_i  [/ sum_i keep_i * w_i   if normalize]
    out = base + lambda * mixed

This follows mergekit's ``generalized_task_arithmetic`` (parameter names, defaults and order
of operations), so a recipe shared with mergekit gives the same model. The magnitude trims
(ties, breadcrumbs) rank within each tensor as mergekit does; ``model_wide_trim: true`` ranks
over each model's whole task vector instead, as the TIES paper does
(:class:`MagnitudeTrimParams`, :mod:`mergekit_like.execute.global_trim`). ``int8_mask`` is
accepted for compatibility; masks here are already booleans, so it changes nothing.
:class:`TaskArithmeticFamily` turns a method's parameters into these options.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from mergekit_like.methods.kernels import Kernels
from mergekit_like.methods.passes import Consensus, Rule, apply_rule
from mergekit_like.methods.reductions import stable_sum
from mergekit_like.methods.sparsify import RANDOM_TRIMS, Trim, TrimKind, TrimState, variance_mask
from mergekit_like.methods.spec import (
    RECIPE_REQUIRED,
    Draws,
    MergeMethod,
    MethodParams,
    TensorContext,
    gather_whole,
)

if TYPE_CHECKING:
    import torch



def generalized_task_arithmetic(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor,
    weights: Sequence[float] | Literal["energy"],
    trims: Sequence[Trim | None] | TaskVectorStats | None = None,
    *,
    lambda_: float | torch.Tensor = 1.0,
    normalize: bool = False,
    consensus: Consensus | None = None,
    select_topk: float = 1.0,
    draws: Sequence[Draws | None] | None = None,
    start: int = 0,
    kernels: Kernels | None = None,
) -> torch.Tensor:
    """Merge the task vectors ``x_i - base``; see the module docstring for the formula.

    Args:
        weights: one per model, or ``"energy"`` (SCE): ``mean(delta_i ** 2)`` normalised to
            sum to 1 (uniform when every task vector is zero).
        trims: how each task vector is sparsified (None: kept whole); or, for one row chunk
            of a larger tensor, the :class:`TaskVectorStats` gathered over all of it, with
            ``start`` the flat index of the chunk's first entry.
        consensus: sign election: ``"sum"`` (TIES: sign of the summed weighted task
            vectors), ``"count"`` (majority of their signs), ``"sum_unweighted"`` (SCE: sign
            of the summed task vectors before weighting); None mixes every entry.
        select_topk: below 1, SCE's selection of high-variance positions (see
            :func:`~mergekit_like.methods.sparsify.variance_mask`).
        draws: each model's random draws, for random trims (``TensorContext.draws``).
        lambda_: a number, or a tensor broadcasting against ``base`` (model_stock).
        kernels: run the passes eagerly (the default) or compiled (:mod:`.kernels`); the
            bytes are the same.

    >>> import torch
    >>> base = torch.zeros(2)
    >>> generalized_task_arithmetic([torch.tensor([1.0, -1.0]), torch.tensor([3.0, 1.0])],
    ...                             base, [1.0, 1.0], normalize=True)
    tensor([2., 0.])
    """
    if kernels is None:
        kernels = Kernels()
    lam = lambda_ if isinstance(lambda_, float | int) else None
    if weights == "energy" or select_topk < 1.0 or lam is None:  # SCE, model_stock
        deltas = [x - base for x in tensors]
        if trims is not None:
            stats = trims if isinstance(trims, TaskVectorStats) else TaskVectorStats.whole(
                trims, tensors, base, draws, kernels)
            deltas = stats.apply(deltas, start, inplace=True)
        if select_topk < 1.0:
            selected = variance_mask(deltas, select_topk)
            deltas = [d * selected for d in deltas]
        if weights == "energy":
            weights = energy_weights(deltas)
        return kernels.mix_deltas(deltas, base, [float(w) for w in weights], lambda_,
                                  consensus, normalize)
    weights = [float(w) for w in weights]
    if trims is None:
        return kernels.trim_mix(tensors, base, [Rule("all")] * len(tensors), weights,
                                float(lam), consensus, normalize)
    if not isinstance(trims, TaskVectorStats):
        trims = TaskVectorStats.whole(trims, tensors, base, draws, kernels)
    return trims.merge(tensors, base, start, weights, float(lam), consensus, normalize)


class TaskVectorStats:
    """The trims of one tensor's task vectors, gathered over the whole tensor.

    Implements :class:`~mergekit_like.methods.spec.TensorStats`: the executor observes the
    inputs chunk by chunk (the task vectors are ``x_i - base``), round by round, then merges
    chunk by chunk with this object in ``TensorContext.stats``.
    """

    def __init__(self, trims: Sequence[Trim | None], numel: int, width: int,
                 draws: Sequence[Draws | None] | None = None,
                 kernels: Kernels | None = None) -> None:
        draws = draws if draws is not None else [None] * len(trims)
        self.kernels = kernels if kernels is not None else Kernels()
        bracket = self.kernels.native() is not None
        self.states = [None if t is None else TrimState(t, numel, width, d, bracket)
                       for t, d in zip(trims, draws, strict=True)]
        self.rounds = max((s.rounds for s in self.states if s is not None), default=0)

    @classmethod
    def whole(cls, trims: Sequence[Trim | None], tensors: Sequence[torch.Tensor],
              base: torch.Tensor, draws: Sequence[Draws | None] | None,
              kernels: Kernels | None = None) -> TaskVectorStats:
        """Gathered from whole tensors (the method got the whole tensor: one chunk)."""
        import torch

        return gather_whole(cls(trims, base.numel(), torch.finfo(base.dtype).bits, draws,
                                kernels), tensors, base)

    def wants(self, round_: int) -> bool:
        """Whether any model's trim still needs round ``round_``."""
        return any(s is not None and round_ < s.rounds and s.wants(round_)
                   for s in self.states)

    def observe(self, round_: int, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                start: int) -> None:
        """Take the next chunk of the inputs (and base) into round ``round_``."""
        assert base is not None
        for x, state in zip(tensors, self.states, strict=True):
            if state is None or round_ >= state.rounds or not state.wants(round_):
                continue
            if state.window is not None and round_ < state.window.rounds:
                state.window.observe_chunk(round_, self.kernels.magnitudes(x, base))
            elif state.norm_round(round_):  # the trim as a rule, as the merge will apply it
                counts = self._counts([x], base, [state])[0]
                plan = state.rule(start, x.numel(), counts, base.device,
                                  self.kernels.magnitudes(x, base).equal_places)
                if isinstance(plan, Rule):
                    self.kernels.trim_norms(x, base, plan, state.norms)
                else:
                    state.observe(round_, x.sub(base), start, edges=plan)
            else:
                state.observe(round_, x.sub(base), start)

    def finish(self, round_: int) -> None:
        """Close round ``round_``."""
        for state in self.states:
            if state is not None and round_ < state.rounds:
                state.finish(round_)

    def merge(self, tensors: Sequence[torch.Tensor], base: torch.Tensor, start: int,
              weights: Sequence[float], lambda_: float, consensus: Consensus | None,
              normalize: bool) -> torch.Tensor:
        """The next chunk merged: trimmed by the gathered statistics, then mixed.

        Where every model's trim of the chunk is a :class:`~.passes.Rule` (all but DELLA's
        and the trims by bounds ranked over the whole model), the chunk is one
        :meth:`~.kernels.Kernels.trim_mix`; else the trims are applied one by one.
        """
        counts = self._counts(tensors, base, self.states)
        plans = [Rule("all") if s is None else
                 s.rule(start, base.numel(), c, base.device,
                        self.kernels.magnitudes(x, base).equal_places)
                 for x, s, c in zip(tensors, self.states, counts, strict=True)]
        rules = [p for p in plans if isinstance(p, Rule)]
        if len(rules) == len(plans):
            return self.kernels.trim_mix(tensors, base, rules, weights, lambda_, consensus,
                                         normalize)
        deltas = []
        for x, state, plan in zip(tensors, self.states, plans, strict=True):
            d = x - base
            if isinstance(plan, Rule):
                deltas.append(apply_rule(d, plan))
            else:
                assert state is not None
                deltas.append(state.apply(d, start, inplace=True, edges=plan))
        return self.kernels.mix_deltas(deltas, base, weights, lambda_, consensus, normalize)

    def _counts(self, tensors: Sequence[torch.Tensor], base: torch.Tensor,
                states: Sequence[TrimState | None]) -> list[list[int]]:
        """Per model, the chunk's counts of entries equal to each of its trim's window
        values: from the rank windows' ledgers where they know them, else counted."""
        known = [[] if s is None else s.known_counts() for s in states]
        wanted = [s.window_values() if k is None and s is not None else []
                  for s, k in zip(states, known, strict=True)]
        if not any(wanted):
            return [k or [] for k in known]
        counted = self.kernels.count_equal(tensors, base, wanted)
        return [c if k is None else k for k, c in zip(known, counted, strict=True)]

    def apply(self, deltas: Sequence[torch.Tensor], start: int, *,
              inplace: bool = False) -> list[torch.Tensor]:
        """The next chunk's task vectors, trimmed (updated in place with ``inplace``)."""
        return [d if s is None else s.apply(d, start, inplace=inplace)
                for d, s in zip(deltas, self.states, strict=True)]


def energy_weights(deltas: Sequence[torch.Tensor]) -> list[float]:
    """SCE's matrix-level weights: ``mean(delta_i ** 2)``, normalised to sum to 1."""
    energy = [float(stable_sum(d.square())) / max(1, d.numel()) for d in deltas]
    total = sum(energy)
    if total == 0:
        return [1.0 / len(deltas)] * len(deltas)
    return [e / total for e in energy]


class TaskArithmeticParams(MethodParams):
    """Global parameters shared by the family (mergekit's names; defaults per method)."""

    lambda_: float = Field(1.0, alias="lambda", description="scale of the merged task vector")
    normalize: bool = Field(False, description="divide by the sum of the weights (of the "
                            "agreeing ones, where signs are elected)")
    rescale: bool = Field(False, description="rescale kept entries so each trimmed task vector "
                          "keeps its L1 norm (mergekit); no effect without trimming")
    int8_mask: bool = Field(False, description="accepted for mergekit compatibility; no effect")


def rescaled_copies(params: TaskArithmeticParams) -> int:
    """Whole-tensor copies per model a chunked magnitude trim keeps with ``rescale: true``:
    its magnitudes before and after the trim, for mergekit's ``torch.sum`` of each."""
    return 2 if params.rescale else 0


class MagnitudeTrimParams(TaskArithmeticParams):
    """Global parameters of the methods that trim by magnitude rank (ties, breadcrumbs)."""

    model_wide_trim: bool = Field(
        False, description="rank magnitudes over all of each model's tensors, one threshold per "
        "model (the TIES paper), not within each tensor (mergekit); needs one density (and "
        "gamma) per model")


class TaskArithmeticModelParams(MethodParams):
    weight: float = Field(1.0, json_schema_extra=RECIPE_REQUIRED,
                          description="scale of this model's task vector (negative subtracts)")


@dataclass(frozen=True)
class TaskArithmeticFamily:
    """The merge function of one family member: its trim and its sign election.

    Reads ``weight`` and, when present, ``density``, ``gamma`` and ``epsilon`` from each
    model's parameters; ``lambda``, ``normalize``, ``rescale``, ``rescale_by_probability``
    and ``model_wide_trim`` from the global ones. Random trims draw from ``ctx.draws`` on
    the base's device; with ``model_wide_trim`` the kept magnitudes come from
    ``ctx.trim_bounds`` (ranked over the whole model before the merge). :meth:`stats` lets
    the executor merge large tensors in row chunks (the trims gathered over the whole
    tensor first); given a whole tensor, the merge gathers them itself, with the same bytes.
    """

    trim: TrimKind | None = None
    consensus: Consensus | None = None

    def trims(self, model_params: Sequence[MethodParams], params: MethodParams,
              ctx: TensorContext) -> list[Trim] | None:
        """Each model's :class:`Trim` (None when the method does not trim)."""
        if self.trim is None:
            return None
        rescale = None
        if getattr(params, "rescale", False):
            by_prob = getattr(params, "rescale_by_probability", False)
            rescale = "probability" if by_prob else "l1"
        bounds: Sequence[tuple[float, float] | None] = [None] * len(model_params)
        if getattr(params, "model_wide_trim", False):
            if ctx.trim_bounds is None:
                raise ValueError("model_wide_trim needs magnitude bounds ranked over the "
                                 "whole model (mergekit_like.execute.global_trim); none were given")
            bounds = ctx.trim_bounds
        return [Trim(self.trim, getattr(p, "density", 1.0), getattr(p, "gamma", 0.0),
                     getattr(p, "epsilon", 0.0), rescale, b)
                for p, b in zip(model_params, bounds, strict=True)]

    def draws(self, n_models: int, numel: int, ctx: TensorContext) -> list[Draws] | None:
        """Each model's random draws, for random trims."""
        if self.trim not in RANDOM_TRIMS:
            return None
        return [ctx.draws(j, numel) for j in range(n_models)]

    def stats(self, shape: tuple[int, ...], width: int, model_params: Sequence[MethodParams],
              params: MethodParams, ctx: TensorContext) -> TaskVectorStats | None:
        """The :class:`TaskVectorStats` for merging a tensor of ``shape`` in row chunks."""
        trims = self.trims(model_params, params, ctx)
        if trims is None:
            return None
        numel = math.prod(shape)
        return TaskVectorStats(trims, numel, width, self.draws(len(model_params), numel, ctx),
                               ctx.kernels)

    def __call__(self, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                 model_params: Sequence[MethodParams], params: MethodParams,
                 ctx: TensorContext) -> torch.Tensor:
        if base is None:
            raise ValueError("this method needs a base_model")
        trims: Sequence[Trim] | TaskVectorStats | None = self.trims(model_params, params, ctx)
        if trims is not None and ctx.stats is not None:
            assert isinstance(ctx.stats, TaskVectorStats)
            trims = ctx.stats
        return generalized_task_arithmetic(
            tensors, base, [getattr(p, "weight", 1.0) for p in model_params], trims,
            lambda_=getattr(params, "lambda_", 1.0), normalize=getattr(params, "normalize", False),
            consensus=self.consensus, draws=self.draws(len(tensors), base.numel(), ctx),
            start=ctx.start, kernels=ctx.kernels,
        )


def family_merge(trim: TrimKind | None = None, consensus: Consensus | None = None
                 ) -> dict[str, Any]:
    """A family member's ``MergeMethod`` fields: merge, stats, and elementwise (row chunks)."""
    family = TaskArithmeticFamily(trim, consensus)
    # compiling pays where there is a trim; plain task arithmetic is a few in-place passes
    return {"merge": family, "stats": family.stats, "elementwise": True,
            "kernels": trim is not None}


TASK_ARITHMETIC = MergeMethod(
    name="task_arithmetic",
    summary="add weighted task vectors (model - base) to the base model (Ilharco et al., 2023)",
    **family_merge(),
    params=TaskArithmeticParams,
    model_params=TaskArithmeticModelParams,
    base="required",
)

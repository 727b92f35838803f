"""RAM and RAM+ (Reinforced Agent Merging, arXiv:2601.13572), as mergekit's ``ram`` and
``ramplus_tl`` compute them.

With task vectors ``tv_i = x_i - base``, an entry *contributes* in model ``i`` when
``|tv_i| > epsilon``; ``c`` counts the contributing models at each entry. An entry that
only one model changes (``c == 1``, *unique*) keeps that model's change whole; an entry
that several change (``c > 1``, *shared*) takes the mean of their changes:

    ram:         out = base + sum_i tv_i * [contrib_i] * ([c == 1] + [c > 1] / max(c, 1))

``ramplus_tl`` (tensor-local RAM+) also scales each model's unique changes up by how much
it overlaps with the others in this tensor: with ``s_i`` and ``u_i`` the numbers of the
tensor's entries where model ``i`` contributes and ``c > 1`` or ``c == 1``,

    rho_i    = s_i / max(u_i, epsilon)
    lambda_i = 1 + r * clamp(rho_i, 0, alpha)
    out      = base + sum_i tv_i * [contrib_i] * ([c == 1] * lambda_i + [c > 1] / max(c, 1))

Defaults are mergekit's (``epsilon`` 1e-5, ``r`` 0.1, ``alpha`` 0.2); a negative
``epsilon``, which mergekit takes (every entry then counts as changed), is refused. The
operations and their order (the per-model terms stacked and summed over the models,
``lambda`` in the counts' float dtype) are mergekit's, so merges give its bytes (checked at
float32 and bfloat16). ``ram`` is elementwise; ``ramplus_tl`` counts ``s_i`` and ``u_i``
over the whole tensor first (:class:`RamPlusStats`), so a large tensor is merged in row
chunks with the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.spec import MergeMethod, MethodParams, NoParams, TensorContext

if TYPE_CHECKING:
    import torch


class RamParams(MethodParams):
    epsilon: float = Field(
        1e-5,
        ge=0.0,
        description="a task-vector entry counts as a change when its magnitude exceeds this",
    )


class RamPlusParams(RamParams):
    r: float = Field(0.1, description="how strongly overlap scales up a model's unique changes")
    alpha: float = Field(0.2, description="the overlap ratio is clamped to [0, alpha]")


def _masks(
    tensors: Sequence[torch.Tensor], base: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat task vectors ``[N, numel]``, their contribution mask, the counts ``c`` and the
    shared (``c > 1``) and unique (``c == 1``) masks."""
    import torch

    tv = torch.stack([t - base for t in tensors], dim=0).view(len(tensors), -1)
    contrib = tv.abs() > epsilon
    counts = contrib.sum(dim=0, keepdim=True)
    return tv, contrib, counts, counts > 1, counts == 1


def _combine(
    base: torch.Tensor,
    tv: torch.Tensor,
    contrib: torch.Tensor,
    counts: torch.Tensor,
    shared: torch.Tensor,
    unique: torch.Tensor,
    lambda_: torch.Tensor | None,
) -> torch.Tensor:
    kept = tv * contrib
    own = kept * unique if lambda_ is None else kept * unique * lambda_.unsqueeze(-1)
    merged = (own + kept * shared / counts.clamp(min=1)).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


def ram_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[NoParams],
    params: RamParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """RAM: unique changes kept whole, shared changes averaged over the models making them."""
    assert base is not None
    tv, contrib, counts, shared, unique = _masks(tensors, base, params.epsilon)
    return _combine(base, tv, contrib, counts, shared, unique, None)


def overlap_lambda(
    shared_counts: torch.Tensor, unique_counts: torch.Tensor, params: RamPlusParams
) -> torch.Tensor:
    """``lambda_i = 1 + r * clamp(s_i / max(u_i, epsilon), 0, alpha)`` from integer counts.

    >>> import torch
    >>> overlap_lambda(torch.tensor([1, 0]), torch.tensor([10, 0]), RamPlusParams())
    tensor([1.0100, 1.0000])
    """
    rho = shared_counts / unique_counts.clamp(min=params.epsilon)
    return 1 + params.r * rho.clamp(min=0, max=params.alpha)


class RamPlusStats:
    """Per model, how many of the tensor's entries it changes that others change too
    (``s_i``) and that only it changes (``u_i``); one round over the row chunks.

    Implements :class:`~mergekit_like.methods.spec.TensorStats`; ``lambda_`` is set after
    the round.
    """

    rounds = 1

    def __init__(self, params: RamPlusParams) -> None:
        self.params = params
        self._shared: torch.Tensor | None = None
        self._unique: torch.Tensor | None = None
        self.lambda_: torch.Tensor | None = None

    def wants(self, round_: int) -> bool:
        """Every round is needed."""
        return True

    def observe(
        self, round_: int, tensors: Sequence[torch.Tensor], base: torch.Tensor | None, start: int
    ) -> None:
        assert base is not None
        _, contrib, _, shared, unique = _masks(tensors, base, self.params.epsilon)
        s, u = (contrib & shared).sum(dim=1), (contrib & unique).sum(dim=1)
        self._shared = s if self._shared is None else self._shared + s
        self._unique = u if self._unique is None else self._unique + u

    def finish(self, round_: int) -> None:
        assert self._shared is not None and self._unique is not None
        self.lambda_ = overlap_lambda(self._shared, self._unique, self.params)


def ramplus_stats(
    shape: tuple[int, ...],
    width: int,
    model_params: Sequence[NoParams],
    params: RamPlusParams,
    ctx: TensorContext,
) -> RamPlusStats | None:
    """:class:`RamPlusStats` for a tensor merged in row chunks."""
    return RamPlusStats(params) if math.prod(shape) > 0 else None


def ramplus_tl_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[NoParams],
    params: RamPlusParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """RAM+ (tensor-local): RAM with each model's unique changes scaled by ``lambda_i``."""
    assert base is not None
    tv, contrib, counts, shared, unique = _masks(tensors, base, params.epsilon)
    if ctx.stats is not None:
        assert isinstance(ctx.stats, RamPlusStats) and ctx.stats.lambda_ is not None
        lambda_ = ctx.stats.lambda_
    else:
        lambda_ = overlap_lambda(
            (contrib & shared).sum(dim=1), (contrib & unique).sum(dim=1), params
        )
    return _combine(base, tv, contrib, counts, shared, unique, lambda_)


RAM = MergeMethod(
    name="ram",
    summary="RAM: changes only one model makes kept whole, shared changes averaged",
    merge=ram_merge,
    params=RamParams,
    base="required",
    elementwise=True,
)

RAMPLUS_TL = MergeMethod(
    name="ramplus_tl",
    summary="RAM+ (tensor-local): RAM with unique changes scaled up by the tensor's overlap",
    merge=ramplus_tl_merge,
    params=RamPlusParams,
    base="required",
    elementwise=True,
    stats=ramplus_stats,
)

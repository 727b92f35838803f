"""NearSwap: take the other model's value only where it is already close to the base's.

Element by element, following mergekit's ``nearswap``:

    w   = clamp(t / max(|base - other|, 1e-6), 0, 1)
    out = w * other + (1 - w) * base

Where the two models differ by at most ``t`` the other model's value is taken outright;
further apart, the result moves toward it by ``t / |base - other|``, so large differences
leave the base nearly untouched. ``t = 0`` gives the base model. The 1e-6 floor on the
difference is mergekit's current behaviour (its first version divided by the raw difference
and mapped the resulting infinities to a weight of 1; the results agree wherever
``t >= 1e-6``). mergekit also accepts a negative ``t`` (which acts as 0); we reject it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from mergekit_like.methods.spec import MergeMethod, MethodParams, NoParams, TensorContext

if TYPE_CHECKING:
    import torch

MIN_DIFF = 1e-6
"""Differences below this are raised to it before dividing."""


class NearSwapParams(MethodParams):
    t: float = Field(
        ..., ge=0.0,
        description="closeness threshold: elements closer than t take the other model's value",
    )


def nearswap(t: float, base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Move ``base`` toward ``other`` by ``clamp(t / |base - other|, 0, 1)`` per element.

    Works in place on ``base`` and ``other`` (they must be owned by the caller).

    >>> import torch
    >>> nearswap(0.1, torch.tensor([0.0, 0.0]), torch.tensor([0.05, 0.4]))
    tensor([0.0500, 0.1000])
    """
    weight = (base - other).abs_().clamp_min_(MIN_DIFF).reciprocal_().mul_(t).clamp_(0.0, 1.0)
    keep = 1.0 - weight
    return other.mul_(weight).add_(base.mul_(keep))


def nearswap_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[NoParams],
    params: NearSwapParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """NearSwap of the one other model into the base model."""
    assert base is not None
    (other,) = tensors
    return nearswap(params.t, base, other)


NEARSWAP = MergeMethod(
    name="nearswap",
    summary="move base_model toward one other model where the two are already close (t)",
    merge=nearswap_merge,
    params=NearSwapParams,
    base="required",
    elementwise=True,
    min_models=1,
    max_models=1,
)

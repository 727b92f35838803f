"""Arcee Fusion: take the other model's change only where it is unusually important, as
mergekit's ``arcee_fusion`` does.

With ``x`` the one other model and ``base`` the base, per tensor:

    kl         = sum_last_dim p * log(p / q),  p = softmax(x) + 1e-8,  q = softmax(base) + 1e-8
    importance = |x - base| * kl                 (kl: one value per row, over the last dim)
    threshold  = Q2 + 1.5 * (Q3 - Q1)            (quartiles of importance over the tensor)
    out        = base + (x - base) * [importance >= threshold]

The quartile ``Qk`` is the sorted importance at index ``floor(k/4 * (n - 1))``, the
fraction taken in float32, as mergekit computes it. mergekit estimates the quartiles of a
tensor of more than 1,000,000 entries from a random sample of 1,000,000 (with replacement),
so its result there is random; we take the exact order statistics it estimates. On tensors
up to that size the two agree to the bit at float32. The mask is float32, as mergekit's is,
so a bfloat16 compute dtype gives the float32 result of mergekit's expression.

The softmax runs along whole rows and the quartiles over the whole tensor, so each tensor
is merged whole (not in row chunks). mergekit takes no parameters for this method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mergekit_like.methods.spec import MergeMethod, NoParams, TensorContext

if TYPE_CHECKING:
    import torch

KL_EPS = 1e-8
"""Added to both softmaxes before the KL divergence."""

QUARTILES = (0.25, 0.5, 0.75)


def importance(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``|x - base|`` times the KL divergence of the rows' softmaxes (one value per row).

    >>> import torch
    >>> importance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])).round(decimals=4)
    tensor([0.1109, 0.0000])
    """
    import torch

    diff = (x - base).abs()
    p = torch.softmax(x, dim=-1) + KL_EPS
    q = torch.softmax(base, dim=-1) + KL_EPS
    return diff * torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)


def threshold(scores: torch.Tensor) -> torch.Tensor:
    """``Q2 + 1.5 (Q3 - Q1)`` of ``scores``, each quartile an entry of the sorted scores."""
    import torch

    flat = scores.reshape(-1)
    index = (torch.tensor(QUARTILES) * (flat.numel() - 1)).long().tolist()
    q1, median, q3 = (torch.kthvalue(flat, i + 1).values for i in index)
    return median + 1.5 * (q3 - q1)


def arcee_fusion_merge(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    model_params: Sequence[NoParams],
    params: NoParams,
    ctx: TensorContext,
) -> torch.Tensor:
    """The base plus the other model's change where its importance reaches the threshold."""
    assert base is not None
    (x,) = tensors
    scores = importance(x, base)
    mask = (scores >= threshold(scores)).float()
    return base + (x - base) * mask


ARCEE_FUSION = MergeMethod(
    name="arcee_fusion",
    summary="Arcee Fusion: the other model's change where its KL-weighted importance is an "
    "outlier (above Q2 + 1.5 IQR)",
    merge=arcee_fusion_merge,
    base="required",
    min_models=1,
    max_models=1,
)

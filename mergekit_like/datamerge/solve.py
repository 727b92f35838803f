"""The merge formulas of Fisher merging and RegMean, one tensor at a time (pure functions).

Example::

    fisher_merge([w0, w1], [f0, f1], scales=[1.0, 1.0], epsilon=1e-6)
    regmean_merge([w0, w1], [g0, g1], alpha=0.95, transposed=False)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def plain_mean(
    tensors: Sequence[torch.Tensor], scales: Sequence[float] | None = None
) -> torch.Tensor:
    """``sum_k s_k theta_k / sum_k s_k`` (uniform when ``scales`` is None), in float32."""
    scales = [1.0] * len(tensors) if scales is None else list(scales)
    return plain_sum(zip(tensors, scales, strict=True)) / sum(scales)


def plain_sum(pairs: Iterable[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """``sum_k s_k theta_k`` over ``(theta_k, s_k)`` pairs taken one at a time (float32)."""
    acc = None
    for t, s in pairs:
        acc = t.float() * s if acc is None else acc + t.float() * s
    assert acc is not None
    return acc


def fisher_sums(
    triples: Iterable[tuple[torch.Tensor, torch.Tensor, float]], epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_k w_k theta_k, sum_k w_k)`` with ``w_k = s_k max(F_k, epsilon)`` over
    ``(theta_k, F_k, s_k)`` triples taken one at a time (elementwise, so any row range of a
    tensor gives the same numbers as the whole)."""
    num = None
    den = None
    for t, f, s in triples:
        w = f.float().clamp_min(epsilon) * s
        num = w * t.float() if num is None else num + w * t.float()
        den = w if den is None else den + w
    assert num is not None and den is not None
    return num, den


def fisher_merge(
    tensors: Sequence[torch.Tensor],
    fishers: Sequence[torch.Tensor | None],
    scales: Sequence[float],
    epsilon: float,
) -> torch.Tensor:
    """``sum_k s_k F_k theta_k / sum_k s_k F_k`` with ``F_k = max(F_k, epsilon)``.

    A tensor for which some model has no Fisher (it got no gradient) is the plain
    ``s``-weighted mean, as is one whose floored Fishers sum to zero (epsilon 0).
    """
    if any(f is None for f in fishers):
        return plain_mean(tensors, scales)
    num, den = fisher_sums(zip(tensors, fishers, scales, strict=True), epsilon)  # type: ignore[arg-type]
    if not bool((den > 0).all()):
        return plain_mean(tensors, scales)
    return num / den


def scaled_gram(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * G + (1 - alpha) * diag(G)``: off-diagonal entries scaled by ``alpha``.

    Computed into one new matrix: ``alpha * G``, plus the zero the diagonal matrix has off
    its diagonal (as the sum written out gives, so a -0.0 becomes 0.0), and the diagonal
    ``alpha * G_ii + (1 - alpha) * G_ii``."""
    import torch

    out = alpha * gram
    out.add_(0.0)
    diag = torch.diagonal(gram)
    torch.diagonal(out).copy_(alpha * diag + (1 - alpha) * diag)
    return out


def regmean_merge(
    weights: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], alpha: float, transposed: bool
) -> torch.Tensor:
    """RegMean's closed form for one linear layer: ``W^T = (sum G_k)^-1 sum G_k W_k^T``.

    ``weights`` are laid out as stored: ``[out, in]`` for ``nn.Linear`` (the solve acts on
    ``W^T``), ``[in, out]`` when ``transposed`` (transformers' ``Conv1D``). The solve is in
    float64. An input feature no example ever sets (a zero row and column of the sum) gets
    the mean of the models' weights for it; any other singular sum falls back to the
    pseudo-inverse.
    """
    return regmean_stream(len(weights), weights.__getitem__, grams.__getitem__, alpha, transposed)


def regmean_stream(
    count: int,
    weight: Callable[[int], torch.Tensor],
    gram: Callable[[int], torch.Tensor],
    alpha: float,
    transposed: bool,
) -> torch.Tensor:
    """:func:`regmean_merge` of ``count`` models whose ``W_k`` and ``G_k`` are read when
    wanted (``weight(k)``, ``gram(k)``): memory holds the float64 sums and one model's
    weight and Gram matrix, whatever the count. The Grams are read twice (their sum first,
    to know which input features no example sets: only those rows of the weights' sum
    are kept for the mean)."""
    import torch

    lhs = None
    for k in range(count):
        g = scaled_gram(gram(k).double(), alpha)
        lhs = g if lhs is None else lhs + g
        del g
    assert lhs is not None
    unused = torch.diagonal(lhs) == 0
    any_unused = bool(unused.any())
    rhs = None
    wsum = None  # rows of the unused features only
    for k in range(count):
        g = scaled_gram(gram(k).double(), alpha)
        wt = weight(k).double()
        wt = wt if transposed else wt.T  # [in, out]
        product = g @ wt
        rhs = product if rhs is None else rhs.add_(product)
        if any_unused:
            rows = wt[unused]
            wsum = 0 + rows if wsum is None else wsum + rows  # as sum(): 0 + first, then each
        del g, wt, product
    assert rhs is not None
    if any_unused:
        assert wsum is not None
        lhs[unused, unused] = 1.0
        rhs[unused] = wsum / count
    del wsum
    try:
        merged = torch.linalg.solve(lhs, rhs)
    except RuntimeError:  # singular: torch.linalg.LinAlgError is a RuntimeError
        merged = torch.linalg.pinv(lhs) @ rhs
    del rhs
    merged = merged.float()
    return merged if transposed else merged.T.contiguous()

"""Sparsification of task vectors: which entries of ``x - base`` survive, and how they are rescaled.

Four ways to trim one task vector (a :class:`Trim` names one and its settings):

- ``magnitude`` (TIES): keep the ``int(density * n)`` largest magnitudes.
- ``outliers`` (Model Breadcrumbs): drop the ``int(gamma * n)`` largest magnitudes *and* the
  smallest, so that ``int(density * n)`` entries remain.

These two rank magnitudes within the tensor (mergekit), unless ``Trim.bounds`` is given: then
they keep the entries with ``low <= |delta| <= high``, bounds ranked over the whole model
beforehand (``model_wide_trim``, :mod:`mergekit_like.global_trim`), every tie at a bound kept.
- ``random`` (DARE): keep each entry independently with probability ``density``.
- ``della`` (DELLA's MagPrune): keep each entry with a probability that grows with its
  magnitude rank within its row, from ``density - epsilon`` (smallest) to
  ``density + epsilon`` (largest), so the expected kept fraction is ``density``.

Random draws use :func:`torch.rand` in float32 from the generator the caller passes (a
:class:`~mergekit_like.methods.spec.TensorContext` generator), one draw of the tensor's shape
per random trim, so a mask depends only on the run's seed and the tensor's name.

Rescaling the kept entries (``Trim.rescale``):

- ``"l1"`` (mergekit's ``rescale: true``): multiply by ``|delta|_1 / |kept|_1`` so the task
  vector keeps its L1 norm (left alone when either norm is below 1e-7). The norms are
  summed in a thread-count independent order (:func:`~.reductions.stable_sum`).
- ``"probability"`` (the DARE and DELLA papers): divide each kept entry by the probability it
  had of being kept: ``1 / density`` for DARE, ``1 / p_i`` for DELLA. Random trims only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mergekit_like.methods.reductions import stable_sum

if TYPE_CHECKING:
    import torch

TrimKind = Literal["magnitude", "outliers", "random", "della"]
RANDOM_TRIMS: frozenset[str] = frozenset({"random", "della"})
L1_EPS = 1e-7


@dataclass(frozen=True)
class Trim:
    """How one task vector is sparsified before it is weighted and mixed.

    ``bounds``: magnitude and outlier trims only; ``(low, high)`` magnitudes ranked over the
    whole model, used instead of ranking within the tensor.

    >>> Trim("random", density=0.3, rescale="l1")
    Trim(kind='random', density=0.3, gamma=0.0, epsilon=0.0, rescale='l1', bounds=None)
    """

    kind: TrimKind
    density: float = 1.0
    gamma: float = 0.0
    epsilon: float = 0.0
    rescale: Literal["l1", "probability"] | None = None
    bounds: tuple[float, float] | None = None


def magnitude_mask(delta: torch.Tensor, density: float,
                   threshold: float | None = None) -> torch.Tensor:
    """A boolean mask keeping the ``int(density * numel)`` entries of largest magnitude.

    ``density >= 1`` keeps everything; ``density`` so small that no entry survives keeps
    nothing. Exactly k entries are kept (ties at the threshold broken by position).
    With ``threshold`` (ranked over the whole model), keeps ``|delta| >= threshold`` instead.

    >>> import torch
    >>> magnitude_mask(torch.tensor([0.5, -3.0, 2.0]), 0.5, threshold=0.5).tolist()
    [True, True, True]
    """
    import torch

    numel = delta.numel()
    if density >= 1.0:
        return torch.ones_like(delta, dtype=torch.bool)
    if threshold is not None:
        return delta.abs() >= threshold
    k = int(density * numel)
    mask = torch.zeros(numel, dtype=torch.bool, device=delta.device)
    if k > 0:
        top = torch.topk(delta.abs().reshape(-1), k, sorted=False).indices
        mask[top] = True
    return mask.view_as(delta)


def outlier_mask(delta: torch.Tensor, density: float, gamma: float,
                 bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """Model Breadcrumbs' mask: drop the largest ``gamma`` fraction and the smallest entries.

    ``int(density * n)`` entries remain; when ``density + gamma > 1`` fewer large entries
    are dropped so the count still holds. Ties in magnitude are broken by position.
    With ``bounds`` (ranked over the whole model), keeps ``low <= |delta| <= high`` instead.

    mergekit's ``magnitude_outliers`` empties the whole tensor when ``int(gamma * n)`` is 0
    (a slice ``[a:-0]``); here no large entry is dropped then, and ``density`` still remain.
    """
    import torch

    numel = delta.numel()
    if density >= 1.0:
        return torch.ones_like(delta, dtype=torch.bool)
    if bounds is not None:
        mags = delta.abs()
        return (mags >= bounds[0]) & (mags <= bounds[1])
    keep = int(density * numel)
    n_top = int(gamma * numel)
    n_bottom = numel - keep - n_top
    if n_bottom < 0:
        n_top += n_bottom
        n_bottom = 0
    order = torch.sort(delta.abs().reshape(-1), stable=True).indices  # ascending
    mask = torch.zeros(numel, dtype=torch.bool, device=delta.device)
    mask[order[n_bottom : numel - n_top]] = True
    return mask.view_as(delta)


def della_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's keep probabilities: linear in the magnitude rank along dimension 1 (rows).

    ``p = density - epsilon + 2 * epsilon * rank / (n - 1)`` with rank 0 the smallest
    magnitude of its row (ties by position); a 1-D tensor is one row; rows of one entry
    get ``p = density``. Returned as float32, shaped like ``delta``.
    """
    import torch

    if not 0.0 < density - epsilon or not density + epsilon < 1.0:
        raise ValueError(f"della needs 0 < density - epsilon and density + epsilon < 1, got "
                         f"density {density} and epsilon {epsilon}")
    mags = delta.abs().float()
    if mags.dim() < 2:
        mags = mags.reshape(1, -1)
    n = mags.shape[1]
    order = torch.argsort(mags, dim=1, stable=True)
    ranks = torch.empty_like(mags)
    steps = torch.arange(n, dtype=torch.float32, device=mags.device)
    shape = [1] * mags.dim()
    shape[1] = n
    ranks.scatter_(1, order, steps.view(shape).expand_as(mags))
    rank_norm = ranks / (n - 1) if n > 1 else torch.full_like(ranks, 0.5)
    return (density - epsilon + 2.0 * epsilon * rank_norm).view(delta.shape)


def sparsify(delta: torch.Tensor, trim: Trim,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """``delta`` trimmed and rescaled as ``trim`` says (a new tensor; ``delta`` is untouched).

    Random trims need ``generator`` (on ``delta``'s device). ``density >= 1`` returns
    ``delta`` unchanged (no rescaling), ``density <= 0`` returns zeros.
    """
    import torch

    if trim.density >= 1.0:
        return delta
    if trim.density <= 0.0:
        return torch.zeros_like(delta)
    prob: float | torch.Tensor | None = None
    if trim.bounds is not None and trim.kind not in ("magnitude", "outliers"):
        raise ValueError(f"{trim.kind} sparsification cannot use bounds ranked over the model")
    if trim.kind == "magnitude":
        mask = magnitude_mask(delta, trim.density,
                              None if trim.bounds is None else trim.bounds[0])
    elif trim.kind == "outliers":
        mask = outlier_mask(delta, trim.density, trim.gamma, trim.bounds)
    elif trim.kind in RANDOM_TRIMS:
        if generator is None:
            raise ValueError(f"{trim.kind} sparsification needs a random generator")
        prob = (trim.density if trim.kind == "random"
                else della_probabilities(delta, trim.density, trim.epsilon))
        draw = torch.rand(delta.shape, generator=generator, device=delta.device,
                          dtype=torch.float32)
        mask = draw < prob
    else:
        raise ValueError(f"unknown sparsification {trim.kind!r}")
    return rescale_kept(delta, mask, trim.rescale, prob)


def rescale_kept(delta: torch.Tensor, mask: torch.Tensor,
                 mode: Literal["l1", "probability"] | None,
                 prob: float | torch.Tensor | None = None) -> torch.Tensor:
    """``delta * mask``, rescaled by ``mode`` (see the module docstring)."""
    kept = delta * mask
    if mode is None:
        return kept
    if mode == "probability":
        if prob is None:
            raise ValueError("rescaling by keep probability applies to random trims only")
        return kept.div_(prob if isinstance(prob, float) else prob.to(kept.dtype))
    before = stable_sum(delta.abs())
    after = stable_sum(kept.abs())
    if before < L1_EPS or after < L1_EPS:
        return kept
    return kept.mul_(before / after)


def variance_mask(deltas: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """SCE's selection: keep the positions where the task vectors vary most across models.

    Keeps the top ``int(fraction * m)`` positions by (population) variance over the models,
    where ``m`` counts positions of non-zero variance; a boolean mask shaped like one delta.
    """
    import torch

    variance = torch.var(torch.stack(deltas), dim=0, unbiased=False)
    k = int(fraction * int(torch.count_nonzero(variance)))
    mask = torch.zeros(variance.numel(), dtype=torch.bool, device=variance.device)
    if k > 0:
        mask[torch.topk(variance.reshape(-1), k, sorted=False).indices] = True
    return mask.view_as(variance)

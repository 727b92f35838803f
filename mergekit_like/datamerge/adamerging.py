"""AdaMerging (Yang et al., 2024): coefficients on the task vectors learned without labels.

The merged model is ``theta_0 + sum_k lambda_k tau_k`` with ``tau_k = theta_k - theta_0``;
``lambda`` is one number per task vector (``granularity: task``) or one per tensor of each
task vector (``layer``). Starting from ``init`` (0.3), each step runs the merged model on a
batch of unlabeled inputs, takes the mean Shannon entropy of its predictions (per example
for classification, per token for a causal LM), steps the optimiser and clamps ``lambda``
to [0, 1]. The task vectors of every merged tensor are held in memory while learning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mergekit_like.datamerge.statistics import Examples
from mergekit_like.recipe.datamerge import AdaMergingParams

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Learned:
    """The learned coefficients ([K] or [tensors, K]) and the entropy before each step."""

    coefficients: torch.Tensor
    entropy: list[float]


def prediction_entropy(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Mean Shannon entropy (nats) of softmax(logits) over examples (or tokens)."""
    logp = logits.float().log_softmax(-1)
    if task == "perplexity":
        logp = logp[:, :-1]
    return -(logp.exp() * logp).sum(-1).mean()


def merged_params(
    base: Sequence[torch.Tensor], vectors: Sequence[torch.Tensor], coef: torch.Tensor
) -> list[torch.Tensor]:
    """``theta_0 + sum_k coef_k tau_k`` per tensor; ``vectors[i]`` stacks tensor i's task
    vectors ([K, ...]); ``coef`` is [K] or [tensors, K]."""
    import torch

    out = []
    for i, (b, v) in enumerate(zip(base, vectors, strict=True)):
        c = coef if coef.dim() == 1 else coef[i]
        out.append(b + torch.tensordot(c, v, dims=1))
    return out


def batch_at(examples: Examples, size: int, seed: int, step: int) -> dict[str, Any]:
    """The inputs of ``step``'s batch: the examples reshuffled every pass (seeded)."""
    import torch

    n = len(examples)
    per_pass = max(1, -(-n // size))
    epoch, i = divmod(step, per_pass)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)[i * size : (i + 1) * size]
    return {k: v[perm] for k, v in examples.inputs.items()}


def learn_coefficients(
    model: Any,
    names: Sequence[str],
    base: Sequence[torch.Tensor],
    vectors: Sequence[torch.Tensor],
    examples: Examples,
    params: AdaMergingParams,
    progress: Any = None,
) -> Learned:
    """Learn AdaMerging's coefficients; ``names`` are the model's own names of the merged
    tensors (``base`` and ``vectors`` in the same order)."""
    import torch
    from torch.func import functional_call

    k = int(vectors[0].shape[0])
    shape = (k,) if params.granularity == "task" else (len(names), k)
    coef = torch.full(shape, params.init, dtype=torch.float32, requires_grad=True)
    opt = (
        torch.optim.Adam([coef], lr=params.lr)
        if params.optimizer == "adam"
        else torch.optim.SGD([coef], lr=params.lr)
    )
    size = params.batch_size or examples.batch_size
    history = []
    steps = range(params.steps) if progress is None else progress(list(range(params.steps)))
    for step in steps:
        tensors = dict(zip(names, merged_params(base, vectors, coef), strict=True))
        inputs = batch_at(examples, size, params.seed, step)
        logits = functional_call(
            model, tensors, args=(), kwargs=inputs, tie_weights=True, strict=False
        ).logits
        loss = prediction_entropy(logits, examples.task)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            coef.clamp_(0.0, 1.0)
        history.append(float(loss.detach()))
    return Learned(coef.detach().clone(), history)


def coefficient_table(
    coef: torch.Tensor, refs: Sequence[str], tensor_names: Sequence[str]
) -> Mapping[str, Any]:
    """The coefficients for the report: ``{model: value}`` or ``{tensor: {model: value}}``."""
    if coef.dim() == 1:
        return {r: float(coef[j]) for j, r in enumerate(refs)}
    return {
        n: {r: float(coef[i, j]) for j, r in enumerate(refs)} for i, n in enumerate(tensor_names)
    }

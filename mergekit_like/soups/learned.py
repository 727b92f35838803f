"""Learned soup: mixing coefficients learned by gradient descent on the held-out loss.

The coefficients are ``softmax(logits / temperature)`` over the ingredients, one set for the
whole model (``granularity: model``) or one per tensor (``tensor``, "by layer"); the logits
start at zero (the uniform soup). Each step mixes the stacked ingredients with the current
coefficients, runs the live model on a val batch with those weights swapped in, and steps
the optimiser on the loss. Unlike greedy soup, this holds every ingredient in memory.
The run's cost is reported as one candidate: building (reading the stacks, loading the final
mixture), training (the gradient steps) and evaluating the result.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mergekit_like.recipe.soups import LearnedSoupParams
from mergekit_like.soups.baselines import baseline_rows
from mergekit_like.soups.context import Row, SoupContext, SoupResult
from mergekit_like.soups.cost import Cost, Stopwatch

if TYPE_CHECKING:
    import torch


def coefficients(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The mixing coefficients: a softmax over the last (ingredient) dimension."""
    return (logits / temperature).softmax(-1)


def _batches(ctx: SoupContext, params: LearnedSoupParams, step: int) -> tuple[Any, Any]:
    """The val batch for ``step``: batches in an order reshuffled every pass (seeded)."""
    import torch

    split = ctx.evaluator.splits.get(ctx.val)
    if split is None:  # custom scorer: it reads its own data
        return {}, None
    size = params.batch_size or ctx.evaluator.cfg.batch_size
    per_pass = max(1, -(-len(split) // size))
    epoch, i = divmod(step, per_pass)
    gen = torch.Generator().manual_seed(params.seed * 1_000_003 + epoch)
    perm = torch.randperm(len(split), generator=gen)[i * size:(i + 1) * size]
    inputs = {k: v[perm] for k, v in split.inputs.items()}
    return inputs, None if split.labels is None else split.labels[perm]


def learned_soup(ctx: SoupContext) -> SoupResult:
    """Learn the coefficients; the written model is the soup with the final coefficients."""
    import torch
    from torch.nn.utils.stateless import _reparametrize_module

    params = ctx.params
    assert isinstance(params, LearnedSoupParams)
    ing, ev = ctx.ingredients, ctx.evaluator
    members = ctx.members
    device = ev.device
    names = [t.name for t in ing.tensors]
    watch = Stopwatch()
    stacks = [torch.stack([ing.read(k, i) for k in members]).to(device)
              for i in range(len(names))]
    shape = (len(members),) if params.granularity == "model" else (len(names), len(members))
    logits = torch.zeros(shape, device=device, requires_grad=True)
    opt = (torch.optim.Adam([logits], lr=params.lr) if params.optimizer == "adam"
           else torch.optim.SGD([logits], lr=params.lr))
    history = []
    model = ing.model
    build = watch.lap()
    for step in ctx.bar(list(range(params.steps)), "learned soup"):
        coef = coefficients(logits, params.temperature)
        mixed = {}
        for i, (name, stack) in enumerate(zip(names, stacks, strict=True)):
            c = coef if params.granularity == "model" else coef[i]
            mixed[ing.model_names[name]] = torch.tensordot(c, stack, dims=1)
        inputs, labels = _batches(ctx, params, step)
        with _reparametrize_module(model, mixed, tie_weights=True):
            loss = ev.batch_loss(model, inputs, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    del stacks
    train = watch.lap()
    final = coefficients(logits.detach(), params.temperature).cpu()
    if params.granularity == "model":
        weights: dict[int, Any] = {k: float(final[j]) for j, k in enumerate(members)}
        table = {ctx.name(k): weights[k] for k in members}
        ctx.ingredients.mix(weights)
    else:
        weights = {k: _filter_list(names, final[:, j]) for j, k in enumerate(members)}
        table = {name: {ctx.name(k): float(final[i, j]) for j, k in enumerate(members)}
                 for i, name in enumerate(names)}
        _load_per_tensor(ctx, members, final)
    build += watch.lap()
    scored = ctx.score_loaded("learned soup")
    cost = Cost(build, watch.lap())
    scored = replace(scored, cost=cost)
    rows, curves = baseline_rows(ctx)
    rows.insert(len(rows) - (1 if rows[-1].name == "ensemble" else 0),
                Row("learned soup", scored, len(members), params.granularity,
                    in_sample=True))
    details = {"coefficients": table, "loss_history": history,
               "granularity": params.granularity, "num_steps": params.steps,
               "cost": {**cost.as_dict(), "train_s": train}}
    return SoupResult(rows, weights, "learned soup", details, curves)


def _filter_list(names: list[str], values: torch.Tensor) -> list[dict[str, Any]]:
    """Per-tensor weights as a recipe filter list; longer names first, so a name that is a
    substring of another never catches the other's tensor."""
    pairs = sorted(zip(names, values.tolist(), strict=True), key=lambda p: -len(p[0]))
    return [{"filter": n, "value": float(v)} for n, v in pairs]


def _load_per_tensor(ctx: SoupContext, members: list[int], coef: torch.Tensor) -> None:
    import torch

    ing = ctx.ingredients
    with torch.no_grad():
        for i, t in enumerate(ing.tensors):
            acc = sum(float(coef[i, j]) * ing.read(k, i) for j, k in enumerate(members))
            ing.targets[t.name].copy_(acc)

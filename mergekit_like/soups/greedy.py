"""Greedy soup, the model soups paper's Recipe 1.

Sort the ingredients by held-out score; start the soup with the best; add each next one if
the soup's held-out score does not drop (``>=``, the paper's text) or rises (``>``, its code).
Each candidate is ``(S + theta_k) / (n + 1)`` from the running sum ``S`` of the n ingredients
already in, so a step reads one ingredient, not the whole soup. Each step records its cost
(build and evaluation seconds, peak RSS); step 1's is that of scoring the first ingredient.
"""

from __future__ import annotations

import random

from mergekit_like.recipe.soups import GreedySoupParams
from mergekit_like.soups.baselines import baseline_rows
from mergekit_like.soups.context import Row, SoupContext, SoupResult
from mergekit_like.soups.cost import cost_dict


def greedy_order(ctx: SoupContext, params: GreedySoupParams) -> list[int]:
    """The order in which ingredients are tried: by val score, as given, or shuffled."""
    if params.order == "score":
        return ctx.ranked()
    order = ctx.members
    if params.order == "random":
        random.Random(params.seed).shuffle(order)
    return order


def greedy_soup(ctx: SoupContext) -> SoupResult:
    """Run Recipe 1; the result's weights are 1 for every accepted ingredient."""
    params = ctx.params
    assert isinstance(params, GreedySoupParams)
    ev, ing = ctx.evaluator, ctx.ingredients
    individual = ctx.individuals()
    order = greedy_order(ctx, params)
    strict = params.comparison == ">"
    first = order[0]
    running = ctx.running_sum()
    try:
        ing.add_to(running, first)
        soup = [first]
        best = individual[first - ctx.first].val
        steps = [{"step": 1, "ingredient": ctx.name(first), "val": best.value,
                  "val_loss": best.loss, "accepted": True, "soup_size": 1,
                  **cost_dict(individual[first - ctx.first].cost)}]
        curve = [(1.0, best.value, None)]
        for k in ctx.bar(order[1:], "greedy soup"):
            n = running.count
            scored = ctx.score_mix({k: 1.0 / (n + 1)}, f"greedy step {len(steps) + 1}",
                                   test=False, running=running, sum_weight=1.0 / (n + 1))
            cand = scored.val
            accepted = ev.at_least(cand.value, best.value, strict=strict)
            if accepted:
                ing.add_to(running, k)
                soup.append(k)
                best = cand
                curve.append((float(len(soup)), cand.value, None))
            steps.append({"step": len(steps) + 1, "ingredient": ctx.name(k), "val": cand.value,
                          "val_loss": cand.loss, "accepted": accepted, "soup_size": len(soup),
                          **cost_dict(scored.cost)})
        on_disk = running.on_disk
    finally:
        running.close()
    final = ctx.score_mix({k: 1.0 / len(soup) for k in soup}, "greedy soup")
    rows, curves = baseline_rows(ctx, order)
    rows.insert(-1 if rows[-1].name == "ensemble" else len(rows),
                Row("greedy soup", final, len(soup), members=tuple(ctx.name(k) for k in soup)))
    curves["greedy soup"] = curve
    details = {"comparison": params.comparison, "order": params.order,
               "tried": [ctx.name(k) for k in order], "steps": steps,
               "soup": [ctx.name(k) for k in soup], "running_sum_on_disk": on_disk}
    return SoupResult(rows, {k: 1.0 for k in soup}, "greedy soup", details, curves)

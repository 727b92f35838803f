"""WiSE-FT: interpolate between the base (zero-shot) model and a fine-tuned model or soup.

Each alpha gives ``(1 - alpha) * base + alpha * mean(fine-tuned models)``; every alpha is
scored on val (and test), and the best on val is written (ties: the first in the list).
Each alpha records its cost (build and evaluation seconds, peak RSS).
"""

from __future__ import annotations

from mergekit_like.recipe.soups import WiseFtParams
from mergekit_like.soups.context import Row, Scored, SoupContext, SoupResult
from mergekit_like.soups.cost import cost_dict


def wise_weights(alpha: float, base: int, members: list[int]) -> dict[int, float]:
    """Ingredient weights of one alpha: base gets 1 - alpha, the fine-tuned share alpha."""
    out = {base: 1.0 - alpha}
    out.update({k: alpha / len(members) for k in members})
    return out


def wise_ft(ctx: SoupContext) -> SoupResult:
    """Sweep the alphas; the result's weights are those of the best alpha."""
    params = ctx.params
    assert isinstance(params, WiseFtParams)
    ev = ctx.evaluator
    members = ctx.members
    base = 0
    sweep: list[tuple[float, Scored]] = []
    for alpha in ctx.bar(list(params.alphas), "wise_ft alphas"):
        sweep.append((alpha, ctx.score_mix(wise_weights(alpha, base, members),
                                           f"alpha={alpha:g}")))
    best = min(range(len(sweep)), key=lambda i: (ev.best_key(sweep[i][1].val.value), i))
    alpha, scored = sweep[best]
    zero = ctx.score_mix({base: 1.0}, "base")
    tuned = ctx.score_mix(wise_weights(1.0, base, members), "fine-tuned")
    rows = [Row("base (zero-shot)", zero, 1, ctx.name(base)),
            Row("fine-tuned" if len(members) == 1 else "fine-tuned (uniform soup)", tuned,
                len(members)),
            Row("wise_ft", scored, len(members) + 1, f"alpha={alpha:g}")]
    details = {"alphas": [{"alpha": a, **s.as_dict(), **cost_dict(s.cost)} for a, s in sweep],
               "best_alpha": alpha}
    curve = [(a, s.val.value, s.test.value if s.test else None) for a, s in sweep]
    weights = {k: w for k, w in wise_weights(alpha, base, members).items() if w}
    return SoupResult(rows, weights, "wise_ft", details, {"wise_ft": curve})

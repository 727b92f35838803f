"""The baselines every soup is compared with: single models, the uniform soup, the ensemble.

The uniform soup of the first j ingredients (in the order tried) comes from a running sum,
so the whole curve costs one pass over each ingredient. The ensemble averages the
ingredients' logits (classification only): it costs K forward passes at inference, which
is what soups avoid, so it is reported, never written.
"""

from __future__ import annotations

from mergekit_like.soups.context import Row, Scored, SoupContext, SoupResult

Curve = list[tuple[float, float, float | None]]


def uniform_curve(ctx: SoupContext, order: list[int]) -> tuple[Curve, Scored]:
    """Scores of the uniform soup of the first j ingredients, j = 1..K; and of all K."""
    running = ctx.running_sum()
    curve: Curve = []
    last: Scored | None = None
    try:
        for j, k in enumerate(order, start=1):
            ctx.ingredients.add_to(running, k)
            if j == 1:
                ind = ctx.individuals()[k - ctx.first]
                last = ind
            else:
                last = ctx.score_mix({}, f"uniform soup of {j}", running=running,
                                     sum_weight=1.0 / j)
            curve.append((float(j), last.val.value, last.test.value if last.test else None))
    finally:
        running.close()
    assert last is not None
    return curve, last


def ensemble_curve(ctx: SoupContext, order: list[int]) -> tuple[Curve, Scored] | None:
    """Scores of the logit ensemble of the first j ingredients; None without logits."""
    ev = ctx.evaluator
    if not ev.has_logits:
        return None
    curve: Curve = []
    sums: dict[str, object] = {}
    last: Scored | None = None
    for j, k in enumerate(order, start=1):
        scores = {}
        for split in (ctx.val, ctx.test):
            if split is None:
                continue
            logits = ctx.logits(k, split)
            sums[split] = logits.clone() if j == 1 else sums[split] + logits  # type: ignore
            scores[split] = ev.score_logits(sums[split] / j, split)  # type: ignore[operator]
        last = Scored(scores[ctx.val], scores.get(ctx.test) if ctx.test else None)
        curve.append((float(j), last.val.value, last.test.value if last.test else None))
    assert last is not None
    return curve, last


def baseline_rows(ctx: SoupContext, order: list[int] | None = None) -> tuple[list[Row], dict]:
    """Rows for the best and second-best single models, the uniform soup and the ensemble,
    with their curves against the number of ingredients (in ``order``, default best first)."""
    order = order or ctx.ranked()
    rows = ctx.individual_rows()
    curves: dict[str, Curve] = {}
    curves["uniform soup"], uniform = uniform_curve(ctx, order)
    rows.append(Row("uniform soup", uniform, len(order)))
    ens = ensemble_curve(ctx, order)
    if ens is not None:
        curves["ensemble"], scored = ens
        rows.append(Row("ensemble", scored, len(order), "average of the logits; not written"))
    return rows, curves


def ensemble(ctx: SoupContext) -> SoupResult:
    """The ``ensemble`` method: the baseline table only; no model is written."""
    if not ctx.evaluator.has_logits:
        from mergekit_like.errors import MergeError

        raise MergeError("merge_method: ensemble needs logits: use evaluation.task: "
                         "classification")
    rows, curves = baseline_rows(ctx)
    return SoupResult(rows, None, "", {}, curves)

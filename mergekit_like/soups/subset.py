"""Subset search: score the uniform average of every non-empty subset, write the best.

With K ingredients there are 2^K - 1 subsets (fewer with ``max_size``); the search refuses to
start when that exceeds ``max_subsets``. Ties go to the smaller subset, then to the one
listed first (subsets are enumerated by size, then in the recipe's order). Each subset
records its cost (a single ingredient's is that of scoring it alone).
"""

from __future__ import annotations

import itertools
from math import comb

from mergekit_like.errors import MergeError
from mergekit_like.recipe.soups import SubsetSearchParams
from mergekit_like.soups.baselines import baseline_rows
from mergekit_like.soups.context import Row, Scored, SoupContext, SoupResult
from mergekit_like.soups.cost import cost_dict


def count_subsets(k: int, max_size: int | None) -> int:
    """Number of non-empty subsets of at most ``max_size`` of ``k`` ingredients."""
    top = min(k, max_size or k)
    return sum(comb(k, s) for s in range(1, top + 1))


def subset_search(ctx: SoupContext) -> SoupResult:
    """Score every subset on val; the best (by val) is written and scored on test."""
    params = ctx.params
    assert isinstance(params, SubsetSearchParams)
    members = ctx.members
    total = count_subsets(len(members), params.max_size)
    if total > params.max_subsets:
        raise MergeError(
            f"soup.max_subsets: {len(members)} ingredients give {total} subsets to score "
            f"(2^K - 1 = {2 ** len(members) - 1} without max_size), more than "
            f"max_subsets={params.max_subsets}; raise soup.max_subsets, set soup.max_size, "
            "or use greedy_soup (K steps)")
    individual = ctx.individuals()
    ev = ctx.evaluator
    scored: list[tuple[tuple[int, ...], Scored]] = []
    top = min(len(members), params.max_size or len(members))
    n = 0
    for size in range(1, top + 1):
        for subset in ctx.bar(list(itertools.combinations(members, size)),
                              f"subsets of {size}"):
            n += 1
            if size == 1:
                one = individual[subset[0] - ctx.first]
            else:
                one = ctx.score_mix({k: 1.0 / size for k in subset}, f"subset {n}/{total}",
                                    test=False)
            scored.append((subset, one))
    best = min(range(len(scored)), key=lambda i: (ev.best_key(scored[i][1].val.value), i))
    subset = scored[best][0]
    final = ctx.score_mix({k: 1.0 / len(subset) for k in subset}, "best subset")
    rows, curves = baseline_rows(ctx)
    names = ", ".join(ctx.name(k) for k in subset)
    rows.insert(len(rows) - (1 if rows[-1].name == "ensemble" else 0),
                Row("best subset", final, len(subset), names,
                    members=tuple(ctx.name(k) for k in subset)))
    details = {"subsets": [{"subset": [ctx.name(k) for k in s], "val": v.val.value,
                            **cost_dict(v.cost)} for s, v in scored],
               "best": [ctx.name(k) for k in subset]}
    return SoupResult(rows, {k: 1.0 for k in subset}, "best subset", details, curves)

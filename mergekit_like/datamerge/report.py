"""The report of a data-driven merge: ``datamerge_report.json`` and ``datamerge_report.md``.

It names the method and its options, the examples used, each ingredient's statistics (cache
hit, miss, or off), the method's own details (AdaMerging's coefficients and entropy curve,
the tensors Fisher merged as a plain mean), the merged model's val and test scores with
their losses and example counts (val also gave the statistics: that score is in-sample),
the merge's wall time and the process's peak RSS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mergekit_like.datamerge.merges import MergeContext
from mergekit_like.recipe.loading import LoadedRecipe
from mergekit_like.soups.cost import peak_rss_bytes

REPORT_JSON = "datamerge_report.json"
REPORT_MD = "datamerge_report.md"


def write_report(
    folder: Path,
    method: str,
    params: Any,
    ctx: MergeContext,
    scores: dict[str, Any],
    merge_s: float,
    loaded: LoadedRecipe,
) -> dict[str, Any]:
    """Write both report files into ``folder``; returns the JSON data."""
    data: dict[str, Any] = {
        "method": method,
        "options": params.model_dump(),
        "models": [m.model for m in loaded.recipe.models or []],
        "base_model": loaded.recipe.base_model,
        "statistics_examples": len(ctx.examples),
        "scores": scores,
        "higher_is_better": loaded.recipe.evaluation.higher_better
        if loaded.recipe.evaluation
        else True,
        "merge_s": merge_s,
        "peak_rss_bytes": peak_rss_bytes(),
        **ctx.details,
    }
    (folder / REPORT_JSON).write_text(json.dumps(data, indent=2) + "\n")
    (folder / REPORT_MD).write_text(markdown(data))
    return data


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown(data: dict[str, Any]) -> str:
    """The report as Markdown: scores, statistics, coefficients."""
    lines = [
        f"# {data['method']} merge",
        "",
        f"Statistics on {data['statistics_examples']} examples of the val split (so the "
        "val score is in-sample).",
        "",
        "| split | score | loss | examples |",
        "|---|---|---|---|",
    ]
    for split, s in data["scores"].items():
        lines.append(f"| {split} | {_fmt(s['score'])} | {_fmt(s['loss'])} | {s['examples']} |")
    stats = data.get("statistics")
    if stats:
        lines += ["", "| model | statistics cache |", "|---|---|"]
        lines += [f"| {s['model']} | {s['cache']} |" for s in stats]
    coef = data.get("coefficients")
    if coef and all(isinstance(v, float) for v in coef.values()):
        lines += ["", "| task vector | coefficient |", "|---|---|"]
        lines += [f"| {m} | {v:.4f} |" for m, v in coef.items()]
    elif coef:
        lines += ["", f"Layer-wise coefficients for {len(coef)} tensors: see {REPORT_JSON}."]
    if data.get("entropy_history"):
        h = data["entropy_history"]
        lines += ["", f"Prediction entropy: {h[0]:.4f} at the first step, {h[-1]:.4f} at the last."]
    if data.get("plain_mean_tensors"):
        lines += [
            "",
            f"{len(data['plain_mean_tensors'])} tensors got no gradient and are the plain mean.",
        ]
    lines += [
        "",
        f"Merge time {data['merge_s']:.2f} s; peak RSS "
        f"{(data['peak_rss_bytes'] or 0) / 2**20:.0f} MiB.",
    ]
    return "\n".join(lines) + "\n"

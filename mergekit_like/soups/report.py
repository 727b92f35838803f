"""The soup report: ``soup_report.json`` (every number) and ``soup_report.md`` (the tables).

The main table follows the model soups paper: best and second-best single models, uniform
soup, greedy / learned soup, ensemble, each with its val and test score and its number of
ingredients. The Markdown adds each ingredient's scores and each greedy step, subset and
alpha. Every candidate scored carries its cost (``build_s``, ``eval_s``, ``peak_rss_bytes``;
see :mod:`mergekit_like.soups.cost`), and ``resources`` says which ingredients were kept in
memory and how many tensors were read from disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mergekit_like.soups.context import SoupContext, SoupResult
from mergekit_like.soups.cost import cost_dict, peak_rss_bytes

REPORT_JSON = "soup_report.json"
REPORT_MD = "soup_report.md"


def report_data(ctx: SoupContext, result: SoupResult, written: bool) -> dict[str, Any]:
    """Everything the report holds, as JSON-ready data."""
    cfg = ctx.evaluator.cfg
    metric = cfg.python or (cfg.metric if cfg.task == "classification" else "perplexity")
    ing = ctx.ingredients
    return {
        "method": ctx.method,
        "metric": metric,
        "higher_is_better": ctx.evaluator.higher_is_better,
        "val_split": ctx.val,
        "test_split": ctx.test,
        "ingredients": [{"name": ctx.name(k), **s.as_dict(), **cost_dict(s.cost)}
                        for k, s in zip(ctx.members, ctx.individuals(), strict=True)],
        "table": [{"name": r.name, **r.scored.as_dict(), "ingredients": r.ingredients,
                   "detail": r.detail, **cost_dict(r.scored.cost)} for r in result.rows],
        "chosen": result.chosen if written else None,
        "written": written,
        "details": result.details,
        "curves": {k: [list(p) for p in v] for k, v in result.curves.items()},
        "resources": {"memory_budget_bytes": ctx.budget,
                      "ingredients_in_memory": [ctx.name(k) for k in ing.in_memory],
                      "tensors_read_from_disk": ing.disk_reads,
                      "peak_rss_bytes": peak_rss_bytes()},
    }


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def table_lines(data: dict[str, Any]) -> list[str]:
    """The main table in Markdown."""
    lines = [f"| model | val {data['metric']} | val loss | test {data['metric']} | test loss "
             "| ingredients |", "|---|---:|---:|---:|---:|---:|"]
    for r in data["table"]:
        name = r["name"] + (f" ({r['detail']})" if r["detail"] else "")
        lines.append(f"| {name} | {_num(r['val'])} | {_num(r['val_loss'])} | {_num(r['test'])} "
                     f"| {_num(r['test_loss'])} | {r['ingredients']} |")
    return lines


COST_HEAD = "| build s | eval s | peak RSS MiB |"
COST_RULE = "---:|---:|---:|"


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def cost_cells(c: dict[str, Any]) -> str:
    """A candidate's cost as the last three cells of a Markdown row."""
    rss = c.get("peak_rss_bytes")
    mib = "-" if rss is None else f"{rss / 2 ** 20:.1f}"
    return f" {_secs(c.get('build_s'))} | {_secs(c.get('eval_s'))} | {mib} |"


def _detail_lines(details: dict[str, Any]) -> list[str]:
    """The method's own sections: greedy steps, alphas, subsets, learned coefficients."""
    lines: list[str] = []
    steps = details.get("steps")
    if steps:
        lines += ["", "## Greedy steps", "", f"Comparison `{details['comparison']}`, "
                  f"order `{details['order']}`.", "",
                  "| step | ingredient | val of candidate soup | accepted | soup size " + COST_HEAD,
                  "|---:|---|---:|---|---:|" + COST_RULE]
        lines += [f"| {s['step']} | {s['ingredient']} | {_num(s['val'])} | "
                  f"{'yes' if s['accepted'] else 'no'} | {s['soup_size']} |" + cost_cells(s)
                  for s in steps]
    if "alphas" in details:
        lines += ["", "## WiSE-FT sweep", "",
                  "| alpha | val | val loss | test | test loss " + COST_HEAD,
                  "|---:|---:|---:|---:|---:|" + COST_RULE]
        lines += [f"| {a['alpha']:g} | {_num(a['val'])} | {_num(a['val_loss'])} | "
                  f"{_num(a['test'])} | {_num(a['test_loss'])} |" + cost_cells(a)
                  for a in details["alphas"]]
    if "subsets" in details:
        lines += ["", "## Subsets", "", "| subset | val " + COST_HEAD, "|---|---:|" + COST_RULE]
        lines += [f"| {', '.join(s['subset'])} | {_num(s['val'])} |" + cost_cells(s)
                  for s in details["subsets"]]
    if "coefficients" in details:
        lines += ["", "## Learned coefficients", "", "```json",
                  json.dumps(details["coefficients"], indent=1)[:4000], "```"]
    if "cost" in details:
        c = details["cost"]
        lines += ["", "## Cost of the run", "", "| train s " + COST_HEAD, "|---:|" + COST_RULE,
                  f"| {_secs(c.get('train_s'))} |" + cost_cells(c)]
    return lines


def markdown(data: dict[str, Any], plots: list[str]) -> str:
    """The human-readable report."""
    direction = "higher" if data["higher_is_better"] else "lower"
    lines = [f"# Soup report: {data['method']}", "",
             f"Score: {data['metric']} ({direction} is better), chosen on the "
             f"`{data['val_split']}` split, reported on `{data['test_split']}`.", ""]
    lines += table_lines(data)
    lines += ["", f"Written: {data['chosen'] if data['written'] else 'nothing'}", "",
              "## Ingredients", "", "| ingredient | val | val loss | test | test loss " + COST_HEAD,
              "|---|---:|---:|---:|---:|" + COST_RULE]
    lines += [f"| {i['name']} | {_num(i['val'])} | {_num(i['val_loss'])} | {_num(i['test'])} | "
              f"{_num(i['test_loss'])} |" + cost_cells(i) for i in data["ingredients"]]
    res = data.get("resources")
    if res:
        kept = len(res["ingredients_in_memory"])
        lines += ["", f"Ingredients kept in memory: {kept} of {len(data['ingredients'])} "
                  f"(memory_budget {res['memory_budget_bytes']} bytes); tensors read from "
                  f"disk: {res['tensors_read_from_disk']}."]
    lines += _detail_lines(data["details"])
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(ctx: SoupContext, result: SoupResult, folder: Path, written: bool,
                 plots: list[str]) -> dict[str, Any]:
    """Write soup_report.json and soup_report.md into ``folder``; returns the data."""
    data = report_data(ctx, result, written)
    data["plots"] = plots
    (folder / REPORT_JSON).write_text(json.dumps(data, indent=2) + "\n")
    (folder / REPORT_MD).write_text(markdown(data, plots))
    return data


def console_table(data: dict[str, Any]) -> str:
    """The main table as aligned plain text, for the terminal."""
    rows = [("model", f"val {data['metric']}", "val loss", f"test {data['metric']}",
             "test loss", "n")]
    rows += [(r["name"], _num(r["val"]), _num(r["val_loss"]), _num(r["test"]),
              _num(r["test_loss"]), str(r["ingredients"])) for r in data["table"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in rows)

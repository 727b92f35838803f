"""The soup report: ``soup_report.json`` (every number) and ``soup_report.md`` (the tables).

The main table follows the model soups paper: best and second-best single models, uniform
soup, greedy / learned soup, ensemble, each with its val and test score and its number of
ingredients. The Markdown adds each ingredient's scores and each greedy step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mergekit_like.soups.context import SoupContext, SoupResult

REPORT_JSON = "soup_report.json"
REPORT_MD = "soup_report.md"


def report_data(ctx: SoupContext, result: SoupResult, written: bool) -> dict[str, Any]:
    """Everything the report holds, as JSON-ready data."""
    cfg = ctx.evaluator.cfg
    metric = cfg.python or (cfg.metric if cfg.task == "classification" else "perplexity")
    return {
        "method": ctx.method,
        "metric": metric,
        "higher_is_better": ctx.evaluator.higher_is_better,
        "val_split": ctx.val,
        "test_split": ctx.test,
        "ingredients": [{"name": ctx.name(k), **s.as_dict()}
                        for k, s in zip(ctx.members, ctx.individuals(), strict=True)],
        "table": [{"name": r.name, **r.scored.as_dict(), "ingredients": r.ingredients,
                   "detail": r.detail} for r in result.rows],
        "chosen": result.chosen if written else None,
        "written": written,
        "details": result.details,
        "curves": {k: [list(p) for p in v] for k, v in result.curves.items()},
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


def markdown(data: dict[str, Any], plots: list[str]) -> str:
    """The human-readable report."""
    direction = "higher" if data["higher_is_better"] else "lower"
    lines = [f"# Soup report: {data['method']}", "",
             f"Score: {data['metric']} ({direction} is better), chosen on the "
             f"`{data['val_split']}` split, reported on `{data['test_split']}`.", ""]
    lines += table_lines(data)
    lines += ["", f"Written: {data['chosen'] if data['written'] else 'nothing'}", "",
              "## Ingredients", "", "| ingredient | val | val loss | test | test loss |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {i['name']} | {_num(i['val'])} | {_num(i['val_loss'])} | {_num(i['test'])} | "
              f"{_num(i['test_loss'])} |" for i in data["ingredients"]]
    steps = data["details"].get("steps")
    if steps:
        lines += ["", "## Greedy steps", "", f"Comparison `{data['details']['comparison']}`, "
                  f"order `{data['details']['order']}`.", "",
                  "| step | ingredient | val of candidate soup | accepted | soup size |",
                  "|---:|---|---:|---|---:|"]
        lines += [f"| {s['step']} | {s['ingredient']} | {_num(s['val'])} | "
                  f"{'yes' if s['accepted'] else 'no'} | {s['soup_size']} |" for s in steps]
    for key, title in (("coefficients", "Learned coefficients"), ("alphas", "WiSE-FT sweep"),
                       ("subsets", "Subsets")):
        if key in data["details"]:
            lines += ["", f"## {title}", "", "```json",
                      json.dumps(data["details"][key], indent=1)[:4000], "```"]
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

"""The soup report: ``soup_report.json`` (every number) and ``soup_report.md`` (the tables).

The main table follows the model soups paper: best and second-best single models, uniform
soup, greedy / learned soup, ensemble, each with its val and test score and its number of
ingredients. Each score carries the number of examples behind it (accuracy cells read
``0.4500 (9/20)``), greedy soup's and the best subset's rows name their ingredients, and
learned soup's val score is marked in-sample (its coefficients were trained on that split).
The Markdown adds each ingredient's scores (best first) and each greedy step, subset (best
first) and alpha; tables longer than :data:`MAX_TABLE_ROWS` are cut, with a note. Every
candidate scored carries its cost (``build_s``, ``eval_s``, ``peak_rss_bytes``; see
:mod:`mergekit_like.soups.cost`), and ``resources`` says which ingredients were kept in
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
MAX_TABLE_ROWS = 20


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
                   "members": list(r.members), "val_in_sample": r.in_sample,
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


def score_cell(value: float | None, examples: int | None, metric: str) -> str:
    """A score with the examples behind it: ``0.4500 (9/20)`` for accuracy, else ``(n=20)``.

    >>> score_cell(0.45, 20, "accuracy"), score_cell(3.5, 8, "perplexity")
    ('0.4500 (9/20)', '3.5000 (n=8)')
    """
    if value is None or not examples:
        return _num(value)
    if metric == "accuracy":
        return f"{value:.4f} ({round(value * examples)}/{examples})"
    return f"{value:.4f} (n={examples})"


def _members(names: list[str], limit: int = 8) -> str:
    more = f", ... (+{len(names) - limit})" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def table_lines(data: dict[str, Any]) -> list[str]:
    """The main table in Markdown."""
    metric = data["metric"]
    lines = [f"| model | val {metric} | val loss | test {metric} | test loss "
             "| ingredients |", "|---|---:|---:|---:|---:|---:|"]
    for r in data["table"]:
        detail = r["detail"] or _members(r.get("members") or [])
        name = r["name"] + (f" ({detail})" if detail else "")
        val = score_cell(r["val"], r.get("val_examples"), metric)
        val += " in-sample" if r.get("val_in_sample") else ""
        lines.append(f"| {name} | {val} | {_num(r['val_loss'])} | "
                     f"{score_cell(r['test'], r.get('test_examples'), metric)} "
                     f"| {_num(r['test_loss'])} | {r['ingredients']} |")
    if any(r.get("val_in_sample") for r in data["table"]):
        lines += ["", "In-sample: the val score of a soup whose coefficients were trained on "
                  "the val split; compare on test."]
    return lines


def _sorted_cut(items: list[dict[str, Any]], higher: bool, key: str = "val"
                ) -> tuple[list[dict[str, Any]], list[str]]:
    """Best first (by ``key``), at most MAX_TABLE_ROWS, and the note for what was cut."""
    order = sorted(items, key=lambda x: (x[key] is None, -(x[key] or 0) if higher
                                         else (x[key] or 0)))
    cut = len(order) - MAX_TABLE_ROWS
    note = ["", f"({cut} more in {REPORT_JSON}.)"] if cut > 0 else []
    return order[:MAX_TABLE_ROWS], note


COST_HEAD = "| build s | eval s | peak RSS MiB |"
COST_RULE = "---:|---:|---:|"


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def cost_cells(c: dict[str, Any]) -> str:
    """A candidate's cost as the last three cells of a Markdown row."""
    rss = c.get("peak_rss_bytes")
    mib = "-" if rss is None else f"{rss / 2 ** 20:.1f}"
    return f" {_secs(c.get('build_s'))} | {_secs(c.get('eval_s'))} | {mib} |"


def _detail_lines(details: dict[str, Any], higher: bool) -> list[str]:
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
                  for s in steps[:MAX_TABLE_ROWS]]
        if len(steps) > MAX_TABLE_ROWS:
            lines += ["", f"({len(steps) - MAX_TABLE_ROWS} more steps in {REPORT_JSON}.)"]
    if "alphas" in details:
        lines += ["", "## WiSE-FT sweep", "",
                  "| alpha | val | val loss | test | test loss " + COST_HEAD,
                  "|---:|---:|---:|---:|---:|" + COST_RULE]
        lines += [f"| {a['alpha']:g} | {_num(a['val'])} | {_num(a['val_loss'])} | "
                  f"{_num(a['test'])} | {_num(a['test_loss'])} |" + cost_cells(a)
                  for a in details["alphas"]]
    if "subsets" in details:
        shown, note = _sorted_cut(details["subsets"], higher)
        lines += ["", "## Subsets", "", "Best first.", "", "| subset | val " + COST_HEAD,
                  "|---|---:|" + COST_RULE]
        lines += [f"| {', '.join(s['subset'])} | {_num(s['val'])} |" + cost_cells(s)
                  for s in shown] + note
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
    metric = data["metric"]
    shown, note = _sorted_cut(data["ingredients"], data["higher_is_better"])
    lines += ["", f"Written: {data['chosen'] if data['written'] else 'nothing'}", "",
              "## Ingredients", "", "Best val first.", "",
              "| ingredient | val | val loss | test | test loss " + COST_HEAD,
              "|---|---:|---:|---:|---:|" + COST_RULE]
    lines += [f"| {i['name']} | {score_cell(i['val'], i.get('val_examples'), metric)} | "
              f"{_num(i['val_loss'])} | {score_cell(i['test'], i.get('test_examples'), metric)}"
              f" | {_num(i['test_loss'])} |" + cost_cells(i) for i in shown] + note
    res = data.get("resources")
    if res:
        kept = len(res["ingredients_in_memory"])
        lines += ["", f"Ingredients kept in memory: {kept} of {len(data['ingredients'])} "
                  f"(memory_budget {res['memory_budget_bytes']} bytes); tensors read from "
                  f"disk: {res['tensors_read_from_disk']}."]
    lines += _detail_lines(data["details"], data["higher_is_better"])
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


def card_section(data: dict[str, Any]) -> str:
    """The model card's account of the soup: the chosen row, its ingredients and scores."""
    row = next((r for r in data["table"] if r["name"] == data["chosen"]), None)
    if row is None:
        return ""
    metric = data["metric"]
    members = row.get("members") or [i["name"] for i in data["ingredients"]]
    rest = [i["name"] for i in data["ingredients"] if i["name"] not in members]
    val = score_cell(row["val"], row.get("val_examples"), metric)
    lines = ["", "## Soup", "", f"{data['chosen']} ({data['method']}) of {len(members)} of "
             f"{len(data['ingredients'])} ingredients, chosen on the `{data['val_split']}` "
             f"split by {metric}: val {val}" + (" (in-sample)" if row.get("val_in_sample")
                                               else "")
             + (f", test {score_cell(row['test'], row.get('test_examples'), metric)}"
                if row["test"] is not None else "") + ".", "", "Ingredients:", ""]
    lines += [f"- `{m}`" for m in members]
    if rest:
        lines += ["", "Not accepted:", ""] + [f"- `{m}`" for m in rest]
    return "\n".join(lines) + "\n"


def console_table(data: dict[str, Any]) -> str:
    """The main table as aligned plain text, for the terminal."""
    rows = [("model", f"val {data['metric']}", "val loss", f"test {data['metric']}",
             "test loss", "n")]
    metric = data["metric"]
    rows += [(r["name"], score_cell(r["val"], r.get("val_examples"), metric)
              + (" in-sample" if r.get("val_in_sample") else ""), _num(r["val_loss"]),
              score_cell(r["test"], r.get("test_examples"), metric), _num(r["test_loss"]),
              str(r["ingredients"])) for r in data["table"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in rows)

"""The analysis report: ``analysis.json`` (every number) and ``analysis.md`` (the tables).

Example::

    write_analysis(analyze(models), Path("out"), plots=True)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mergekit_like.analyze.stats import DEFINITIONS

REPORT_JSON = "analysis.json"
REPORT_MD = "analysis.md"
MAX_LAYER_ROWS = 64


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _matrix_lines(names: list[str], m: list[list[float | None]], digits: int) -> list[str]:
    short = [f"m{i}" for i in range(len(names))]
    lines = ["| | " + " | ".join(short) + " |", "|---|" + "---:|" * len(names)]
    lines += [
        f"| {short[i]} | " + " | ".join(_f(x, digits) for x in row) + " |"
        for i, row in enumerate(m)
    ]
    return lines


def _conflict_head(densities: list[float]) -> tuple[str, str]:
    cells = [f"conflict @{d:g}" for d in densities] + [f"TIES disagree @{d:g}" for d in densities]
    return " | ".join(cells), "---:|" * len(cells)


def _conflict_cells(group: dict[str, Any]) -> str:
    ds = group["densities"].values()
    return " | ".join(
        [_pct(d["sign_conflict"]) for d in ds] + [_pct(d["ties_disagreement"]) for d in ds]
    )


def markdown(data: dict[str, Any]) -> str:
    """The human-readable report."""
    names, dens = data["models"], data["densities"]
    ov = data["overall"]
    lines = [
        "# Task-vector analysis",
        "",
        f"Base model: `{data['base']}`; "
        f"{data['tensors_analysed']} tensors analysed, {len(data['tensors_skipped'])} "
        "skipped (not shared by every model with one shape, or not floating point).",
        "",
        "| | model | norm of task vector |",
        "|---|---|---:|",
    ]
    lines += [
        f"| m{i} | `{n}` | {_f(v, 6)} |"
        for i, (n, v) in enumerate(zip(names, ov["norms"], strict=True))
    ]
    lines += ["", "## Pairwise cosine", ""] + _matrix_lines(names, ov["cosine"], 4)
    lines += ["", "## Pairwise angle (degrees)", ""] + _matrix_lines(names, ov["angle_degrees"], 2)
    head, rule = _conflict_head(dens)
    lines += [
        "",
        "## Sign conflicts after trimming",
        "",
        *DEFINITIONS,
        "",
        "| group | parameters | mean cosine | " + head + " |",
        "|---|---:|---:|" + rule,
        _group_row("overall", ov),
    ]
    lines += [_group_row(kind, g) for kind, g in data["kinds"].items()]
    layers = data["layers"]
    if layers:
        lines += [
            "",
            "## Per layer",
            "",
            "| layer | parameters | mean cosine | norms | " + head + " |",
            "|---|---:|---:|---|" + rule,
        ]
        for g in layers[:MAX_LAYER_ROWS]:
            norms = ", ".join(_f(v, 3) for v in g["norms"])
            lines.append(
                f"| {g['stack']}{g['layer']} | {g['parameters']} | "
                f"{_f(g['mean_pairwise_cosine'])} | {norms} | {_conflict_cells(g)} |"
            )
        if len(layers) > MAX_LAYER_ROWS:
            lines += ["", f"({len(layers) - MAX_LAYER_ROWS} more layers in {REPORT_JSON}.)"]
    if data.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in data["plots"]]
    return "\n".join(lines) + "\n"


def _group_row(label: str, g: dict[str, Any]) -> str:
    return (
        f"| {label} | {g['parameters']} | {_f(g['mean_pairwise_cosine'])} | {_conflict_cells(g)} |"
    )


def write_analysis(data: dict[str, Any], folder: Path, plots: bool = True) -> dict[str, Any]:
    """Write analysis.json, analysis.md (and the PNG plots) into ``folder``."""
    from mergekit_like.analyze.plots import write_plots

    data = {**data, "plots": write_plots(data, folder) if plots else []}
    (folder / REPORT_JSON).write_text(json.dumps(data, indent=2) + "\n")
    (folder / REPORT_MD).write_text(markdown(data))
    return data

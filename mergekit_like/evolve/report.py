"""The search's report: evolve_report.json, evolve_report.md and evolve_report.png.

Every generation's best val score (and loss), the best so far, and the best candidate's
recipe parameters by name (``models[0].weight`` -> one value per layer group).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPORT_JSON = "evolve_report.json"
REPORT_MD = "evolve_report.md"
REPORT_PNG = "evolve_report.png"


def write_report(data: dict[str, Any], folder: Path, plots: bool = True) -> list[str]:
    """Write the JSON and Markdown reports (and the plot); returns the file names."""
    names = [REPORT_JSON, REPORT_MD]
    if plots:
        _plot(data, folder / REPORT_PNG)
        names.append(REPORT_PNG)
    data = {**data, "files": names}
    (folder / REPORT_JSON).write_text(json.dumps(data, indent=2) + "\n")
    (folder / REPORT_MD).write_text(markdown(data))
    return names


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def markdown(data: dict[str, Any]) -> str:
    """The report as Markdown: the chosen model, then one row per generation."""
    best = data["best"]
    lines = [f"# merge evolve: {data['merge_method']}, {data['parameters']} parameters", "",
             f"{data['evaluations']} candidates in {len(data['generations'])} generations "
             f"(seed {data['seed']}, stopped by: {data['stopped']}); val chooses "
             f"({'higher' if data['higher_is_better'] else 'lower'} is better), test is only "
             "reported.", "",
             f"Chosen: generation {best['generation']}, candidate {best['candidate']}: "
             f"val {_num(best['val'])} (loss {_num(best['val_loss'])}), test "
             f"{_num(best['test'])} (loss {_num(best['test_loss'])}); recipe "
             f"`{data['recipe']}`.", "",
             "| generation | best val | its loss | best so far | sigma | evaluations |",
             "|---|---|---|---|---|---|"]
    for g in data["generations"]:
        b = g["best"]
        lines.append(f"| {g['generation']} | {_num(b['val'])} | {_num(b['val_loss'])} | "
                     f"{_num(g['best_so_far'])} | {g['sigma']:.4g} | {g['evaluations']} |")
    lines += ["", "Chosen parameters (one value per layer group):", "",
              "| parameter | values |", "|---|---|"]
    for name, values in best["parameters"].items():
        lines.append(f"| {name} | {', '.join(f'{v:.6g}' for v in values)} |")
    return "\n".join(lines) + "\n"


def _plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = [g["generation"] for g in data["generations"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for g in data["generations"]:
        vals = [c["val"] for c in g["candidates"]]
        ax.scatter([g["generation"]] * len(vals), vals, s=8, color="0.7")
    ax.plot(gens, [g["best"]["val"] for g in data["generations"]], marker="o",
            label="best of generation")
    ax.plot(gens, [g["best_so_far"] for g in data["generations"]], linestyle="--",
            label="best so far")
    ax.set_xlabel("generation")
    ax.set_ylabel(f"val {data['metric']}")
    ax.set_title(f"merge evolve ({data['merge_method']}): val score per generation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

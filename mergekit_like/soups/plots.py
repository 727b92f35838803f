"""PNG plots of a soup run (matplotlib, headless): score against the number of ingredients
and score against alpha (WiSE-FT).

The ingredients plot shows every model of the report in its own colour, its val score
filled and its test score hollow (dashed for curves): the individual ingredients (at 1),
the uniform soup and ensemble curves, greedy soup's accepted steps ending at its test score,
and the method's own result (learned soup, best subset) as a point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

INGREDIENTS_PNG = "score_vs_ingredients.png"
ALPHA_PNG = "score_vs_alpha.png"
_SINGLES = ("best individual", "second best individual")


def ingredient_series(data: dict[str, Any]) -> list[dict[str, Any]]:
    """What the ingredients plot draws: one entry per model (label, colour, x, val, test,
    and whether it is a curve)."""
    rows = {r["name"]: r for r in data["table"]}
    series = []
    for name, points in data["curves"].items():
        if name == "wise_ft":
            continue
        tests = [p[2] for p in points]
        row = rows.get(name)
        if row is not None and points and points[-1][0] == row["ingredients"] and tests[-1] is None:
            tests[-1] = row["test"]  # greedy's steps are scored on val only; its result on test
        series.append(
            {
                "label": name,
                "x": [p[0] for p in points],
                "val": [p[1] for p in points],
                "test": tests,
                "curve": True,
            }
        )
    if data["method"] != "wise_ft":
        series += [
            {
                "label": r["name"],
                "x": [r["ingredients"]],
                "val": [r["val"]],
                "test": [r["test"]],
                "curve": False,
            }
            for r in data["table"]
            if r["name"] not in data["curves"] and r["name"] not in _SINGLES
        ]
    ing = data["ingredients"]
    if ing and data["method"] != "wise_ft":
        series.append(
            {
                "label": "individual ingredients",
                "x": [1] * len(ing),
                "val": [i["val"] for i in ing],
                "test": [i["test"] for i in ing],
                "curve": False,
            }
        )
    for i, s in enumerate(series):
        s["colour"] = f"C{i}" if i < 10 else f"#{(i * 2654435761) % 0xFFFFFF:06x}"
    return series


def write_plots(data: dict[str, Any], folder: Path) -> list[str]:
    """Draw the plots that the report allows; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    series = ingredient_series(data)
    if series:
        _ingredients_plot(plt, series, data, folder / INGREDIENTS_PNG)
        written.append(INGREDIENTS_PNG)
    if "wise_ft" in data["curves"]:
        _alpha_plot(plt, data, folder / ALPHA_PNG)
        written.append(ALPHA_PNG)
    return written


def _ingredients_plot(
    plt: Any, series: list[dict[str, Any]], data: dict[str, Any], path: Path
) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for s in series:
        style = "-" if s["curve"] else "none"
        ax.plot(
            s["x"],
            s["val"],
            marker="o",
            linestyle=style,
            color=s["colour"],
            label=f"{s['label']} (val)",
        )
        if any(t is not None for t in s["test"]):
            xs = [x for x, t in zip(s["x"], s["test"], strict=True) if t is not None]
            ts = [t for t in s["test"] if t is not None]
            ax.plot(
                xs,
                ts,
                marker="o",
                markerfacecolor="none",
                linestyle="--" if s["curve"] else "none",
                color=s["colour"],
                label=f"{s['label']} (test)",
            )
    ax.set_xlabel("number of ingredients")
    ax.set_ylabel(data["metric"])
    ax.set_title(f"{data['method']}: score against number of ingredients")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _alpha_plot(plt: Any, data: dict[str, Any], path: Path) -> None:
    points = data["curves"]["wise_ft"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="C0", label="val")
    if any(p[2] is not None for p in points):
        ax.plot(
            [p[0] for p in points],
            [p[2] for p in points],
            marker="o",
            markerfacecolor="none",
            linestyle="--",
            color="C0",
            label="test",
        )
    ax.set_xlabel("alpha (0 = base, 1 = fine-tuned)")
    ax.set_ylabel(data["metric"])
    ax.set_title("WiSE-FT: score against alpha")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

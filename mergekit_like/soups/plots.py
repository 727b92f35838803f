"""PNG plots of a soup run (matplotlib, headless): score against the number of ingredients
(greedy, uniform, ensemble) and score against alpha (WiSE-FT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

INGREDIENTS_PNG = "score_vs_ingredients.png"
ALPHA_PNG = "score_vs_alpha.png"


def write_plots(data: dict[str, Any], folder: Path) -> list[str]:
    """Draw the plots that the report's curves allow; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    curves = data["curves"]
    metric = data["metric"]
    by_count = {k: v for k, v in curves.items() if k != "wise_ft"}
    if by_count:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, points in by_count.items():
            xs = [p[0] for p in points]
            ax.plot(xs, [p[1] for p in points], marker="o", label=f"{name} (val)")
            if any(p[2] is not None for p in points):
                ax.plot(xs, [p[2] for p in points], marker="x", linestyle="--",
                        label=f"{name} (test)")
        ax.set_xlabel("number of ingredients")
        ax.set_ylabel(metric)
        ax.set_title(f"{data['method']}: score against number of ingredients")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / INGREDIENTS_PNG, dpi=100)
        plt.close(fig)
        written.append(INGREDIENTS_PNG)
    if "wise_ft" in curves:
        points = curves["wise_ft"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="val")
        if any(p[2] is not None for p in points):
            ax.plot([p[0] for p in points], [p[2] for p in points], marker="x",
                    linestyle="--", label="test")
        ax.set_xlabel("alpha (0 = base, 1 = fine-tuned)")
        ax.set_ylabel(metric)
        ax.set_title("WiSE-FT: score against alpha")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / ALPHA_PNG, dpi=100)
        plt.close(fig)
        written.append(ALPHA_PNG)
    return written

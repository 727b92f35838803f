"""PNG plots of an analysis (matplotlib, headless): a heatmap of the pairwise cosines and
per-layer curves (task-vector norms, mean pairwise cosine, sign conflict by density)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HEATMAP_PNG = "cosine_heatmap.png"
LAYERS_PNG = "per_layer.png"


def write_plots(data: dict[str, Any], folder: Path) -> list[str]:
    """Draw the heatmap and (when the models have layers) the per-layer curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = [_heatmap(plt, data, folder)]
    if data["layers"]:
        written.append(_layers(plt, data, folder))
    return written


def _heatmap(plt: Any, data: dict[str, Any], folder: Path) -> str:
    import numpy as np

    cos = np.array(
        [[np.nan if x is None else x for x in row] for row in data["overall"]["cosine"]],
        dtype=float,
    )
    k = cos.shape[0]
    fig, ax = plt.subplots(figsize=(2 + 0.6 * k, 1.5 + 0.6 * k))
    im = ax.imshow(cos, vmin=-1, vmax=1, cmap="RdBu_r")
    labels = [f"m{i}" for i in range(k)]
    ax.set_xticks(range(k), labels)
    ax.set_yticks(range(k), labels)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                if not np.isnan(cos[i, j]):
                    ax.text(j, i, f"{cos[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("cosine of task vectors")
    fig.tight_layout()
    fig.savefig(folder / HEATMAP_PNG, dpi=100)
    plt.close(fig)
    return HEATMAP_PNG


def _layers(plt: Any, data: dict[str, Any], folder: Path) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    stacks = sorted({g["stack"] for g in data["layers"]})
    for stack in stacks:
        rows = [g for g in data["layers"] if g["stack"] == stack]
        xs = [g["layer"] for g in rows]
        tag = f"{stack} " if len(stacks) > 1 else ""
        for i in range(len(data["models"])):
            axes[0].plot(xs, [g["norms"][i] for g in rows], marker=".", label=f"{tag}m{i}")
        axes[1].plot(xs, [g["mean_pairwise_cosine"] for g in rows], marker=".", label=tag or None)
        for d in data["densities"]:
            axes[2].plot(
                xs,
                [g["densities"][f"{d:g}"]["sign_conflict"] for g in rows],
                marker=".",
                label=f"{tag}density {d:g}",
            )
    for ax, title in zip(
        axes, ("task-vector norm", "mean pairwise cosine", "sign conflict fraction"), strict=True
    ):
        ax.set_xlabel("layer")
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / LAYERS_PNG, dpi=100)
    plt.close(fig)
    return LAYERS_PNG

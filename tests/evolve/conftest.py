"""Tiny 2-layer ViT ingredients with known weights, and evolve configs over them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from mergekit_like.evolve.runner import EvolveOptions, run_evolve

BIASES = (0.25, 0.5, 1.0)  # classifier.bias[0] of each ingredient
LAYER0 = (0.0, 0.5, 0.2)  # layer 0's query bias[0] of each ingredient


def tiny_vit_config():
    from transformers import ViTConfig

    return ViTConfig(image_size=4, patch_size=2, num_channels=1, hidden_size=8,
                     num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                     num_labels=3)


def make_ingredients(root: Path) -> list[Path]:
    """A base ViT and one fine-tune per entry of BIASES (seeded noise, two weights set)."""
    import torch
    from transformers import ViTForImageClassification

    torch.manual_seed(0)
    base = ViTForImageClassification(tiny_vit_config()).state_dict()
    folders = []
    for k, (b, q) in enumerate(zip((0.0, *BIASES), (0.0, *LAYER0), strict=True)):
        model = ViTForImageClassification(tiny_vit_config())
        gen = torch.Generator().manual_seed(100 + k)
        state = {n: t + 0.05 * k * torch.randn(t.shape, generator=gen) for n, t in base.items()}
        state["classifier.bias"][0] = b
        state["vit.layers.0.attention.q_proj.bias"][0] = q
        model.load_state_dict(state)
        folder = root / ("base" if k == 0 else f"ft{k - 1}")
        model.save_pretrained(folder)
        folders.append(folder)
    return folders


@pytest.fixture(scope="package")
def vits(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """[base, ft0, ft1, ft2]: 2-layer ViTs (hidden 8), made once for every evolve test."""
    return make_ingredients(tmp_path_factory.mktemp("evolve-vits"))


def evolve_config(models: Sequence[Path], method: str = "linear", base: Path | None = None,
                  genome: str = "", search: str = "generations: 2\n  popsize: 4",
                  extra: str = "") -> str:
    """A merge evolve config over ``models``, scored by tests.evolve.scorers:closeness."""
    lines = ["genome:", f"  merge_method: {method}", "  models:"]
    lines += [f"    - {m}" for m in models]
    if base is not None:
        lines.append(f"  base_model: {base}")
    lines += [f"  {g}" for g in genome.strip().splitlines()]
    lines += ["evaluation:", "  python: tests.evolve.scorers:closeness", "search:",
              f"  {search}"]
    return "\n".join(lines) + "\n" + extra


SEARCH = "generations: 3\n  popsize: 4\n  seed: 7"


def config(root: Path, vits: list[Path], search: str = SEARCH) -> Path:
    path = root / "evolve.yaml"
    path.write_text(evolve_config(vits[1:], genome="layer_granularity: 1", search=search))
    return path


@pytest.fixture(scope="package")
def baseline(tmp_path_factory, vits) -> tuple[Path, dict]:
    """An uninterrupted serial search: 3 generations of 4 candidates, 6 parameters."""
    root = tmp_path_factory.mktemp("evolve-baseline")
    out = root / "out"
    data = run_evolve(config(root, vits), out, EvolveOptions(allow_code=True, quiet=True))
    return out, data


def candidate_scores(data: dict) -> list[list[float]]:
    return [[c["val"] for c in g["candidates"]] for g in data["generations"]]

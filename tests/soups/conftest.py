"""Tiny ViT ingredients whose ``classifier.bias[0]`` is set exactly (see scorers.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest


def tiny_vit_config():
    from transformers import ViTConfig

    return ViTConfig(image_size=4, patch_size=2, num_channels=1, hidden_size=8,
                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                     num_labels=3)


def make_ingredients(root: Path, biases: Sequence[float], noise: float = 0.05) -> list[Path]:
    """One ViT per bias: a shared random init plus seeded noise, classifier.bias[0] = bias."""
    import torch
    from transformers import ViTForImageClassification

    torch.manual_seed(0)
    base = ViTForImageClassification(tiny_vit_config()).state_dict()
    folders = []
    for k, b in enumerate(biases):
        model = ViTForImageClassification(tiny_vit_config())
        gen = torch.Generator().manual_seed(100 + k)
        state = {n: t + noise * torch.randn(t.shape, generator=gen) for n, t in base.items()}
        state["classifier.bias"][0] = b
        model.load_state_dict(state)
        folder = root / f"ing{k}"
        model.save_pretrained(folder)
        folders.append(folder)
    return folders


@pytest.fixture
def ingredients(tmp_path: Path) -> Callable[[Sequence[float]], list[Path]]:
    """Factory: ``ingredients([0.75, 0.5])`` -> model folders under tmp_path/models."""
    return lambda biases: make_ingredients(tmp_path / "models", biases)


COST_KEYS = ("build_s", "eval_s", "peak_rss_bytes")


def assert_costs(entries: Sequence[dict]) -> None:
    """Every report entry (a candidate) carries its cost as non-negative numbers."""
    assert entries
    for e in entries:
        for key in COST_KEYS:
            assert isinstance(e[key], int | float) and e[key] >= 0, (key, e)


def soup_recipe(method: str, models: Sequence[Path], scorer: str = "distance",
                soup: str = "", extra: str = "") -> str:
    """A soup recipe over ``models`` scored by a custom scorer of scorers.py."""
    lines = [f"merge_method: {method}", "models:"]
    lines += [f"  - model: {m}" for m in models]
    lines += ["evaluation:", f"  python: tests.soups.scorers:{scorer}"]
    if scorer == "squared_error":
        lines.append("  higher_is_better: false")
    if soup:
        lines += ["soup:"] + [f"  {line}" for line in soup.strip().splitlines()]
    return "\n".join(lines) + "\n" + extra

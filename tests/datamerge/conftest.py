"""Tiny ingredients and data for the data-driven merges: three 1-layer ViT classifiers
(tests/soups' ingredients, noisier) and random 4x4 images with labels in a .npz file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.soups.conftest import make_ingredients

N_EXAMPLES = 6  # examples the statistics are computed on (datamerge.num_examples)


@pytest.fixture(scope="module")
def vit_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """(three ViT model folders, data.npz with val and test splits), built once a module."""
    import numpy as np

    root = tmp_path_factory.mktemp("datamerge")
    folders = make_ingredients(root / "models", [0.1, 0.5, 0.9], noise=0.3)
    gen = np.random.default_rng(0)
    arrays = {
        f"{s}_inputs": gen.normal(size=(n, 1, 4, 4)).astype("float32")
        for s, n in (("val", 10), ("test", 5))
    }
    arrays |= {f"{s}_labels": gen.integers(0, 3, n) for s, n in (("val", 10), ("test", 5))}
    np.savez(root / "data.npz", **arrays)
    return folders, root / "data.npz"


def recipe_text(
    method: str,
    models: Sequence[Path],
    data: Path,
    options: str = "",
    base: Path | None = None,
    weights: Sequence[float] | None = None,
) -> str:
    """A data-driven recipe over ``models`` with classification data ``data``."""
    lines = [f"merge_method: {method}"]
    if base is not None:
        lines.append(f"base_model: {base}")
    lines.append("models:")
    for i, m in enumerate(models):
        lines.append(f"  - model: {m}")
        if weights is not None:
            lines.append(f"    parameters: {{weight: {weights[i]}}}")
    lines += [
        "evaluation:",
        "  task: classification",
        f"  data: {data}",
        "  batch_size: 4",
        "datamerge:",
        f"  num_examples: {N_EXAMPLES}",
    ]
    lines += [f"  {line}" for line in options.strip().splitlines() if line]
    return "\n".join(lines) + "\n"


@pytest.fixture
def run_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """``run_merge(recipe_text) -> OUT``: runs ``merge RECIPE OUT --quiet`` with the user
    cache under tmp_path/cache; fails the test on a non-zero exit."""
    from mergekit_like.cli import main

    monkeypatch.setenv("MERGEKIT_LIKE_CACHE", str(tmp_path / "cache"))
    count = [0]

    def run(text: str, *args: str) -> Path:
        count[0] += 1
        recipe = tmp_path / f"recipe{count[0]}.yaml"
        recipe.write_text(text)
        out = tmp_path / f"out{count[0]}"
        assert main([str(recipe), str(out), "--quiet", *args]) == 0
        return out

    return run


def load_vit(folder: Path):  # noqa: ANN201 - a transformers model
    """An ingredient as a live float32 model in eval mode."""
    from transformers import ViTForImageClassification

    return ViTForImageClassification.from_pretrained(folder).float().eval()


def val_examples(data: Path, n: int = N_EXAMPLES):  # noqa: ANN201 - (inputs, labels)
    """The first ``n`` val examples of ``data``: (pixel_values, labels) tensors."""
    import numpy as np
    import torch

    with np.load(data) as arrays:
        return (
            torch.from_numpy(arrays["val_inputs"][:n]),
            torch.from_numpy(arrays["val_labels"][:n]).long(),
        )


def read_output(out: Path) -> dict:
    """Every tensor of OUT/model.safetensors."""
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")

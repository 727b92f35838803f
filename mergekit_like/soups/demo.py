"""The model soups demo on real data: scikit-learn's bundled digits (8x8 images, 10 classes).

``python -m mergekit_like.soups.demo`` pretrains a tiny ViTForImageClassification once, then
fine-tunes it from that shared initialisation 8 times with varied learning rate, weight
decay, label smoothing, augmentation, epochs and seed (each saved as a Hugging Face model
folder under demo-out/digits/), and runs recipes/demo/digits-soups.yaml (greedy soup), which
prints the model soups table; then the same ingredients as a learned soup, and the paper's
table with both. A fixed stratified split gives train / val (chooses) / test
(reported). Runs in a few minutes on 2 CPU cores; no downloads.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "demo" / "digits-soups.yaml"
SPLIT_SEED = 0  # the train/val/test split is fixed, whatever --seed says


@dataclass(frozen=True)
class FineTune:
    """One fine-tuning run's hyperparameters."""

    lr: float
    weight_decay: float
    label_smoothing: float
    augment: bool
    epochs: int


FINE_TUNES = (
    FineTune(1e-3, 0.0, 0.0, False, 6), FineTune(3e-3, 0.05, 0.1, True, 8),
    FineTune(5e-4, 0.1, 0.0, True, 10), FineTune(2e-3, 0.0, 0.1, False, 5),
    FineTune(1e-3, 0.1, 0.2, True, 8), FineTune(3e-3, 0.01, 0.0, False, 4),
    FineTune(7e-4, 0.05, 0.1, True, 6), FineTune(1.5e-3, 0.2, 0.05, True, 7),
)


def load_digits_splits() -> dict[str, tuple[Any, Any]]:
    """Digits as (pixel_values in [-1, 1] shaped (N, 1, 8, 8), labels), split 60/20/20."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x.astype(np.float32) / 16.0 - 0.5) / 0.5
    x = x.reshape(-1, 1, 8, 8)
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.4, stratify=y,
                                                  random_state=SPLIT_SEED)
    x_val, x_te, y_val, y_te = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest,
                                                random_state=SPLIT_SEED)
    return {"train": (x_tr, y_tr), "val": (x_val, y_val), "test": (x_te, y_te)}


def tiny_vit() -> Any:
    """A 2-layer ViT for 8x8 greyscale images: 2x2 patches, hidden 48."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=48,
                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                       num_labels=10, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
    return ViTForImageClassification(config)


def _augment(x: Any, gen: Any) -> Any:
    """Shift each image by up to one pixel and add a little noise."""
    import torch

    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return x + 0.1 * torch.randn(x.shape, generator=gen)


def train(model: Any, data: tuple[Any, Any], lr: float, weight_decay: float,
          label_smoothing: float, augment: bool, epochs: int, seed: int) -> Any:
    """A plain AdamW loop (batch 32) on (pixel_values, labels) numpy arrays."""
    import torch
    import torch.nn.functional as F

    x, y = torch.from_numpy(data[0]), torch.from_numpy(data[1]).long()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 32):
            idx = perm[i:i + 32]
            xb = _augment(x[idx], gen) if augment else x[idx]
            loss = F.cross_entropy(model(pixel_values=xb).logits, y[idx],
                                   label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def save(model: Any, folder: Path) -> None:
    """Save a model folder with an image processor that maps 0..16 pixels to [-1, 1]."""
    from transformers import ViTImageProcessor

    model.save_pretrained(folder)
    ViTImageProcessor(do_resize=False, size={"height": 8, "width": 8}, rescale_factor=1 / 16,
                      image_mean=[0.5], image_std=[0.5]).save_pretrained(folder)


def build_ingredients(root: Path, seed: int, log: bool = True) -> list[Path]:
    """Write data.npz, the pretrained model and the fine-tunes under ``root``."""
    import numpy as np
    import torch

    splits = load_digits_splits()
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "data.npz", **{f"{s}_{k}": v for s in ("val", "test")
                                   for k, v in zip(("inputs", "labels"), splits[s],
                                                   strict=True)})
    x_tr, y_tr = splits["train"]
    half = len(x_tr) // 2  # pretraining sees half the training set, fine-tunes all of it
    torch.manual_seed(0)
    start = time.perf_counter()
    pretrained = train(tiny_vit(), (x_tr[:half], y_tr[:half]), 1e-3, 0.01, 0.0, False, 15, 0)
    save(pretrained, root / "pretrained")
    if log:
        print(f"pretrained {root / 'pretrained'} ({time.perf_counter() - start:.0f}s)")
    state = pretrained.state_dict()
    folders = []
    for i, ft in enumerate(FINE_TUNES):
        model = tiny_vit()
        model.load_state_dict(state)
        run_seed = seed * 1000 + i
        train(model, splits["train"], ft.lr, ft.weight_decay, ft.label_smoothing, ft.augment,
              ft.epochs, run_seed)
        folder = root / f"ft-{i:02d}"
        save(model, folder)
        folders.append(folder)
        if log:
            print(f"fine-tuned {folder.name}: lr={ft.lr:g} wd={ft.weight_decay:g} "
                  f"ls={ft.label_smoothing:g} augment={ft.augment} epochs={ft.epochs} "
                  f"seed={run_seed} ({time.perf_counter() - start:.0f}s)")
    return folders


def main(argv: Sequence[str] | None = None) -> int:
    """Build the digits ingredients and run the greedy soup recipe on them."""
    parser = argparse.ArgumentParser(prog="python -m mergekit_like.soups.demo",
                                     description="Model soups on scikit-learn's digits.")
    parser.add_argument("--root", type=Path, default=Path("demo-out/digits"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the fine-tunes")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest for this tiny model)")
    parser.add_argument("--evolve-seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="search seeds of the evolved soup, one search each (none: skip)")
    ns = parser.parse_args(argv)
    import torch
    from transformers.utils import logging as hf_logging

    from mergekit_like.cli import main as merge_main
    from mergekit_like.soups.report import REPORT_JSON, console_table

    torch.set_num_threads(ns.threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    build_ingredients(ns.root, ns.seed)
    out = ns.root / "greedy-soup"
    overrides = [f"evaluation.data={ns.root / 'data.npz'}"] + [
        f"models.{i}.model={ns.root / f'ft-{i:02d}'}" for i in range(len(FINE_TUNES))]
    print(f"\nmerge {RECIPE.relative_to(RECIPE.parents[2])} {out}\n")
    code = merge_main([str(RECIPE), str(out), "--force", *overrides])
    if code:
        return code
    learned = ns.root / "learned-soup"
    print(f"\nthe same ingredients as a learned soup: merge ... {learned} "
          "merge_method=learned_soup '~soup'")
    code = merge_main([str(RECIPE), str(learned), "--force", "--quiet", *overrides,
                       "merge_method=learned_soup", "~soup"])
    if code:
        return code
    evolved = []
    for seed in ns.evolve_seeds:
        folder = ns.root / f"evolved-soup-s{seed}"
        print(f"\nthe same ingredients as an evolved soup: merge evolve "
              f"{ns.root / EVOLVE_CONFIG} {folder} search.seed={seed}")
        config = write_evolve_config(ns.root)
        code = merge_main(["evolve", str(config), str(folder), "--force", "--quiet",
                           f"search.seed={seed}"])
        if code:
            return code
        evolved.append(folder / "evolve_report.json")
    print("\nthe model soups table on digits (accuracy; val chooses, test is only reported):\n")
    print(console_table(paper_table(out / REPORT_JSON, learned / REPORT_JSON, evolved)))
    return 0


EVOLVE_CONFIG = "digits-evolve.yaml"
EVOLVE_SEARCH = {"generations": 5, "popsize": 8}  # 40 candidates per search seed


def write_evolve_config(root: Path) -> Path:
    """The evolved soup's config: a linear merge of the fine-tunes, one weight per ingredient
    per layer, searched by CMA-ES from the uniform soup, chosen by val accuracy."""
    import yaml

    models = [str((root / f"ft-{i:02d}").resolve()) for i in range(len(FINE_TUNES))]
    data = {"genome": {"merge_method": "linear", "models": models, "layer_granularity": 1},
            "evaluation": {"task": "classification", "data": str((root / "data.npz").resolve()),
                           "batch_size": 512},
            "search": EVOLVE_SEARCH, "dtype": "float32"}
    path = root / EVOLVE_CONFIG
    path.write_text("# merge evolve demo-out/digits/digits-evolve.yaml OUT search.seed=0 "
                    "(written by python -m mergekit_like.soups.demo)\n" +
                    yaml.safe_dump(data, sort_keys=False))
    return path


def paper_table(greedy_report: Path, learned_report: Path,
                evolve_reports: Sequence[Path] = ()) -> dict[str, Any]:
    """The greedy soup's report with the learned soup's row, and one row per evolved soup
    (each search seed), added before the ensemble."""
    import json

    data = json.loads(greedy_report.read_text())
    learned = json.loads(learned_report.read_text())
    added = [next(r for r in learned["table"] if r["name"] == "learned soup")]
    for path in evolve_reports:
        report = json.loads(path.read_text())
        best = report["best"]
        added.append({"name": f"evolved soup (search seed {report['seed']})",
                      **{k: best[k] for k in ("val", "val_loss", "test", "test_loss")},
                      "ingredients": len(report["best"]["parameters"]),
                      "detail": f"{report['evaluations']} candidates"})
    rows = data["table"]
    at = next((i for i, r in enumerate(rows) if r["name"] == "ensemble"), len(rows))
    data["table"] = [*rows[:at], *added, *rows[at:]]
    return data


if __name__ == "__main__":
    sys.exit(main())

"""Fisher, RegMean and AdaMerging next to uniform, task arithmetic, TIES and the best single
model, on the digits demo's ingredients and on a tiny text classifier, over several seeds.

    .venv/bin/python bench/datamerge_figures.py --seeds 0 1 2          # both suites, minutes

Digits: ``mergekit_like.soups.demo.build_ingredients`` (a tiny ViT pretrained on half of
scikit-learn's digits, then 8 fine-tunes with varied hyperparameters; seed = the demo's
``--seed``). Text: a 2-layer BERT (hidden 32) on a synthetic token task
(label 1 when the sequence holds more tokens of ids 5-9 than of ids 10-14; lengths 6-16,
padded, with an attention mask; 15% of the labels flipped), pretrained for one epoch on a
quarter of the training set, then 4 fine-tunes on all of it (lr, epochs and data order varied).
Every merge runs through ``merge`` with the recipe's ``evaluation:`` block; the data-driven
methods take their statistics from the first ``num_examples`` of the val split, so their val
score is in-sample and test is the figure to compare. Every run's val and test accuracy and
loss is printed (a Markdown table per suite) and written to ``--out``/figures.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

#: the methods and their settings, fixed before any run
METHODS: dict[str, dict[str, Any]] = {
    "uniform": {"merge_method": "linear"},
    "task_arithmetic": {"merge_method": "task_arithmetic", "base": True, "weight": 0.3},
    "ties": {"merge_method": "ties", "base": True, "weight": 1.0, "density": 0.2},
    "fisher": {"merge_method": "fisher", "datamerge": {"num_examples": 128}},
    "regmean": {"merge_method": "regmean", "datamerge": {"num_examples": 128}},
    "adamerging": {
        "merge_method": "adamerging",
        "base": True,
        "datamerge": {"num_examples": 128, "lr": 0.01, "steps": 50},
    },
}


NOISE = 0.15


def text_data(seed: int, n: int) -> tuple[Any, Any, Any]:
    """(input_ids, attention_mask, labels) of the synthetic sentiment-like token task."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 17, n)
    ids = rng.integers(1, 40, (n, 16))
    mask = (np.arange(16)[None] < lengths[:, None]).astype("int64")
    ids = ids * mask
    pos = ((ids >= 5) & (ids <= 9)).sum(1)
    neg = ((ids >= 10) & (ids <= 14)).sum(1)
    labels = (pos > neg).astype("int64")
    flip = rng.random(n) < NOISE  # label noise: no model can beat 1 - NOISE on average
    return ids.astype("int64"), mask, np.where(flip, 1 - labels, labels)


def tiny_bert() -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(
        BertConfig(
            vocab_size=40,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=16,
            num_labels=2,
        )
    )


def train_bert(model: Any, data: tuple[Any, Any, Any], lr: float, epochs: int, seed: int) -> Any:
    """AdamW, batch 32, cross-entropy."""
    import torch

    ids, mask, labels = (torch.from_numpy(a) for a in data)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(ids), generator=gen).split(32):
            loss = model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def build_text(root: Path, seed: int) -> list[Path]:
    """data.npz, pretrained/ and ft-00..03/ under ``root``; returns the fine-tune folders."""
    import numpy as np
    import torch

    root.mkdir(parents=True, exist_ok=True)
    train = text_data(1000 + seed, 2000)
    splits = {"val": text_data(2000 + seed, 400), "test": text_data(3000 + seed, 400)}
    np.savez(
        root / "data.npz",
        **{
            f"{s}_{k}": v
            for s, arrays in splits.items()
            for k, v in zip(("inputs", "attention_mask", "labels"), arrays, strict=True)
        },
    )
    torch.manual_seed(seed)
    quarter = tuple(a[:500] for a in train)
    pretrained = train_bert(tiny_bert(), quarter, 1e-3, 1, seed)
    pretrained.save_pretrained(root / "pretrained")
    folders = []
    for i, (lr, epochs) in enumerate(((5e-4, 3), (1e-3, 2), (2e-3, 2), (1e-3, 4))):
        model = tiny_bert()
        model.load_state_dict(pretrained.state_dict())
        train_bert(model, train, lr, epochs, seed * 1000 + i)
        model.save_pretrained(root / f"ft-{i:02d}")
        folders.append(root / f"ft-{i:02d}")
    return folders


def run(recipe: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run one recipe with ``merge``; returns val/test scores and losses."""
    from mergekit_like.cli import main

    path = folder.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    if main([str(path), str(folder), "--quiet", "--force"]) != 0:
        raise SystemExit(f"merge failed: {path}")
    report = folder / "datamerge_report.json"
    if report.exists():
        s = json.loads(report.read_text())["scores"]
        return {
            "val": s["val"]["score"],
            "val_loss": s["val"]["loss"],
            "test": s["test"]["score"],
            "test_loss": s["test"]["loss"],
        }
    data = json.loads((folder / "eval_report.json").read_text())
    return {k: data[k] for k in ("val", "val_loss", "test", "test_loss")}


def suite(root: Path, base: Path, fts: list[Path], data: Path) -> dict[str, dict[str, Any]]:
    """Every method of :data:`METHODS` and the best single fine-tune (by val)."""
    evaluation = {"task": "classification", "data": str(data), "batch_size": 64}
    results = {}
    singles = [
        run(
            {"merge_method": "linear", "models": [{"model": str(f)}], "evaluation": evaluation},
            root / f"single-{f.name}",
        )
        for f in fts
    ]
    best = max(range(len(fts)), key=lambda i: (singles[i]["val"], -i))
    results["best individual"] = {**singles[best], "model": fts[best].name}
    for name, spec in METHODS.items():
        recipe: dict[str, Any] = {"merge_method": spec["merge_method"]}
        if spec.get("base"):
            recipe["base_model"] = str(base)
        params = {k: spec[k] for k in ("weight", "density") if k in spec}
        recipe["models"] = [
            {"model": str(f), **({"parameters": params} if params else {})} for f in fts
        ]
        recipe["evaluation"] = evaluation
        if "datamerge" in spec:
            recipe["datamerge"] = {**spec["datamerge"], "cache": False}
        results[name] = run(recipe, root / name)
    return results


def table(name: str, by_seed: dict[int, dict[str, dict[str, Any]]]) -> str:
    """A Markdown table: one row per method, test acc / test loss / val acc per seed."""
    seeds = sorted(by_seed)
    head = " | ".join(f"seed {s}: test acc / loss (val acc)" for s in seeds)
    lines = [
        f"### {name}",
        "",
        f"| method | {head} | mean test acc |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for method in by_seed[seeds[0]]:
        cells = []
        for s in seeds:
            r = by_seed[s][method]
            cells.append(f"{r['test']:.4f} / {r['test_loss']:.4f} ({r['val']:.4f})")
        mean = sum(by_seed[s][method]["test"] for s in seeds) / len(seeds)
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build the ingredients per seed, run every method, print the tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--suites", nargs="+", default=["digits", "text"])
    p.add_argument("--out", type=Path, default=Path("bench/work/datamerge-figures"))
    ns = p.parse_args(argv)
    import torch
    from transformers.utils import logging as hf_logging

    from mergekit_like.soups.demo import build_ingredients

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    figures: dict[str, dict[int, Any]] = {}
    for name in ns.suites:
        for seed in ns.seeds:
            root = ns.out / f"{name}-{seed}"
            if name == "digits":
                fts = build_ingredients(root, seed, log=False)
            else:
                fts = build_text(root, seed)
            figures.setdefault(name, {})[seed] = suite(
                root, root / "pretrained", fts, root / "data.npz"
            )
            print(f"{name} seed {seed}: done", file=sys.stderr)
        print(table(name, figures[name]) + "\n")
    (ns.out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

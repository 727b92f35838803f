"""Sweeps (``merge -m RECIPE OUT parameters.density=0.2,0.5,0.8``), hydra multirun style.

Every combination of the comma-separated (or ``range(...)``) override values runs into its
own folder under OUT (``OUT/0_density=0.2`` ...); ``OUT/sweep_summary.json`` and ``.md``
list each setting with its val and test score (from the recipe's ``evaluation:`` block; a
soup reports the model it wrote).
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mergekit_like.errors import MergeError, Problem, RecipeError
from mergekit_like.execute.setup import MergeOptions
from mergekit_like.recipe.loading import OVERRIDE_FILE

SUMMARY_JSON = "sweep_summary.json"
SUMMARY_MD = "sweep_summary.md"


def expand_sweeps(overrides: Sequence[str]) -> list[tuple[list[str], list[str]]]:
    """Every combination of the sweep overrides: (all overrides, the swept ones) per run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise RecipeError(Problem(f"bad override: {str(exc).splitlines()[0]}", (),
                                  OVERRIDE_FILE)) from None
    axes: list[list[tuple[str, bool]]] = []
    for ov, text in zip(parsed, overrides, strict=True):
        if ov.is_sweep_override():
            key = ov.get_key_element()
            axes.append([(f"{key}={v}", True) for v in ov.sweep_string_iterator()])
        else:
            axes.append([(text, False)])
    return [([o for o, _ in combo], [o for o, swept in combo if swept])
            for combo in itertools.product(*axes)]


def _slug(i: int, swept: list[str]) -> str:
    text = ",".join(s.rsplit(".", 1)[-1] if "=" in s.rsplit(".", 1)[-1] else s for s in swept)
    return re.sub(r"[^A-Za-z0-9=.,_+-]", "_", f"{i}_{text}" if text else str(i))[:120]


def _scores(data: dict[str, Any]) -> tuple[float | None, float | None]:
    if "table" in data:  # a soup: the row it wrote (the first row when nothing was written)
        rows = data["table"]
        row = next((r for r in rows if r["name"] == data.get("chosen")), rows[0])
        return row["val"], row["test"]
    if "scores" in data:  # a data-driven merge: the merged model's scores
        return (data["scores"].get("val", {}).get("score"),
                data["scores"].get("test", {}).get("score"))
    return data.get("val"), data.get("test")


#: ``run_one(recipe, overrides, folder, options) -> report data`` runs one setting
RunOne = Callable[[Path, Sequence[str], Path, MergeOptions], dict[str, Any]]


def run_sweep(recipe: Path, out: Path, overrides: Sequence[str], options: MergeOptions,
              allow_code: bool = False,
              prepare: Callable[[Path, Sequence[str]], None] | None = None,
              run_one: RunOne | None = None,
              ) -> list[dict[str, Any]]:
    """Run every combination into its own folder under ``out``; write the summary.

    ``prepare(recipe, overrides)`` runs before each run (``merge`` fetches its hub models);
    ``run_one`` runs one setting (default: the soups runner; ``merge`` passes one that also
    runs the data-driven merges).
    """
    from mergekit_like.soups.runner import run_recipe

    if run_one is None:
        def run_one(path: Path, combo: Sequence[str], folder: Path,
                    opts: MergeOptions) -> dict[str, Any]:
            return run_recipe(path, folder, opts, combo, allow_code)

    runs = expand_sweeps(overrides)
    if out.exists() and not options.force and any(out.iterdir()):
        raise MergeError(f"{out}: already exists; pass --force to replace its runs")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    failed: list[Problem] = []
    for i, (combo, swept) in enumerate(runs):
        folder = out / _slug(i, swept)
        if not options.quiet:
            print(f"[{i + 1}/{len(runs)}] {' '.join(swept) or '(no sweep)'} -> {folder}")
        row: dict[str, Any] = {"run": folder.name, "overrides": swept}
        try:
            if prepare is not None:
                prepare(recipe, combo)
            data = run_one(recipe, combo, folder, replace(options, force=True))
            row["val"], row["test"] = _scores(data)
            row["higher_is_better"] = data.get("higher_is_better")
        except MergeError as exc:
            row["error"] = "; ".join(str(p) for p in exc.problems)
            failed.extend(Problem(f"run {folder.name}: {p}") for p in exc.problems)
            print(f"error: {row['error']}", file=sys.stderr)
        rows.append(row)
    (out / SUMMARY_JSON).write_text(json.dumps(rows, indent=2) + "\n")
    (out / SUMMARY_MD).write_text(summary_markdown(rows))
    if not options.quiet:
        print(summary_markdown(rows))
    if failed:
        raise MergeError(failed)
    return rows


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """The sweep's summary table in Markdown."""
    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.4f}"

    lines = ["| run | overrides | val | test |", "|---|---|---:|---:|"]
    for r in rows:
        tail = f"error: {r['error']} | -" if "error" in r else f"{num(r.get('val'))} | " \
               f"{num(r.get('test'))}"
        lines.append(f"| {r['run']} | {' '.join(r['overrides'])} | {tail} |")
    return "\n".join(lines) + "\n"

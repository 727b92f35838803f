"""The executor's own cost: CPU seconds of ``merge`` on a model of many small tensors.

    .venv/bin/python bench/bench_overhead.py --code /tmp/before --repeat 7

On a model of 32 layers of hidden size 64 (about 290 tensors of at most 32K entries) the
arithmetic is nearly free, so what is measured is everything around it: start-up, planning,
the executor's per-step work, the writer. Each run is a child process with one torch thread
(``OMP_NUM_THREADS=1``), the two code copies taking turns, so that a busy machine slows both
alike; the minimum and the median CPU seconds (user + system) of each are printed. Compare
code copies with it, not machines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_merge import MERGE, recipe_for, run_child  # noqa: E402
from make_models import SIZES, Shape, write_family  # noqa: E402

SMALL = Shape(vocab=512, hidden=64, intermediate=128, layers=32, heads=4, kv_heads=2, tie=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", type=Path, required=True, help="the other mergekit_like copy")
    p.add_argument("--methods", nargs="+", default=["linear", "ties", "slerp"])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--shape", choices=("small", *SIZES), default="small",
                   help="small: many small tensors (the default); or a bench_merge size")
    ns = p.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        write_family(SMALL if ns.shape == "small" else SIZES[ns.shape], models)
        print("| method | code | min CPU s | median CPU s | runs |\n|---|---|---|---|---|")
        for method in ns.methods:
            recipe = Path(tmp) / f"{method}.yaml"
            recipe.write_text(yaml.safe_dump(recipe_for(method, models)))
            cpu: dict[str, list[float]] = {"this tree": [], str(ns.code): []}
            for _ in range(ns.repeat):
                for label, code in (("this tree", None), (str(ns.code), ns.code)):
                    out = Path(tmp) / "out"
                    m = run_child([*MERGE, str(recipe), str(out), "--quiet", "--force"], code)
                    cpu[label].append(m.cpu)
            for label, values in cpu.items():
                print(f"| {method} | {label} | {min(values):.3f} | "
                      f"{statistics.median(values):.3f} | {len(values)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

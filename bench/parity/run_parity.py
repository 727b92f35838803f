"""mergekit 0.1.5 against `merge`, tensor by tensor, on generated tiny models.

    .venv/bin/python bench/parity/run_parity.py                 # full matrix (a few minutes)
    .venv/bin/python bench/parity/run_parity.py --quick         # one case per method, 2 families
    .venv/bin/python bench/parity/run_parity.py --mergekit-venv /work/venvs/mk --cases 'ties|sce'

Installs mergekit into a venv of its own (``--mergekit-venv``, default
``bench/work/mergekit-venv``: ``pip install torch==2.13.0`` then ``mergekit==0.1.5``),
writes the model families of ``models.py`` and, for every case of ``cases.py`` on every
family, one mergekit YAML; runs mergekit on it (``mk_driver.py``, in mergekit's venv) and
``merge`` (this checkout's ``.venv/bin/merge``, or ``--merge-cmd``) with a small
``--chunk-size`` so large tensors are merged in chunks; then compares the outputs. Prints a
table and writes ``bench/work/parity/results.{json,md}``. The test suite never imports
mergekit; this script is the only place the two meet.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from cases import CASES, Case  # noqa: E402
from compare import Result, compare_exact, compare_random  # noqa: E402
from models import FAMILIES, Family, build_family  # noqa: E402
from report import render_markdown, render_table  # noqa: E402

# What the recipe's dtype keys are on each family: as published recipes write them.
FAMILY_DTYPE_KEYS: dict[str, dict] = {
    "llama-f32": {},
    "mistral-f32": {},
    "qwen2-bf16": {},  # no dtype: mergekit computes in bfloat16, we in float32
    "llama-bf16": {"dtype": "float32", "out_dtype": "bfloat16"},
}
QUICK_FAMILIES = ("llama-f32", "qwen2-bf16")
FULL_FAMILY = "llama-f32"  # every case; the other families run the core ones


def ensure_mergekit(venv: Path) -> Path:
    """The venv's python, creating the venv and installing mergekit 0.1.5 when missing."""
    py = venv / "bin" / "python"
    check = [
        str(py),
        "-c",
        "import mergekit.merge, importlib.metadata as m; print(m.version('mergekit'))",
    ]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    print(f"installing mergekit 0.1.5 into {venv} (a few minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["mergekit==0.1.5"], check=True)
    subprocess.run(check, check=True)
    return py


def our_methods(merge_cmd: list[str]) -> set[str]:
    out = subprocess.run(merge_cmd + ["methods"], capture_output=True, text=True).stdout
    return {m.group(1) for m in re.finditer(r"^(\w+):", out, re.M)}


def write_recipe(case: Case, fam: Family, paths: dict, path: Path) -> None:
    import yaml

    recipe = case.build(paths, fam) | FAMILY_DTYPE_KEYS.get(fam.name, {})
    if not recipe.get("parameters"):
        recipe.pop("parameters", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


def run_ours(
    cmd: list[str], recipe: Path, out: Path, args: argparse.Namespace
) -> tuple[bool, str, float]:
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    full = (
        cmd
        + [
            str(recipe),
            str(out),
            "--force",
            "--quiet",
            "--chunk-size",
            args.chunk_size,
            "--seed",
            str(args.seed),
        ]
        + shlex.split(args.merge_args)
    )
    start = time.perf_counter()
    # from the work folder: `python -m mergekit_like` must not pick up the checkout in cwd
    proc = subprocess.run(full, capture_output=True, text=True, cwd=out.parent)
    secs = time.perf_counter() - start
    msg = (proc.stderr.strip().splitlines() or [""])[-1][:400]
    return proc.returncode == 0, msg, secs


def run_mergekit(py: Path, jobs: list[dict], work: Path) -> list[dict]:
    jobs_file, res_file = work / "mk_jobs.json", work / "mk_results.json"
    jobs_file.write_text(json.dumps(jobs))
    subprocess.run(
        [str(py), str(HERE / "mk_driver.py"), str(jobs_file), str(res_file)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return json.loads(res_file.read_text())


def select(args: argparse.Namespace) -> list[tuple[Case, Family]]:
    fams = [f for f in FAMILIES if re.search(args.families, f.name)]
    if args.quick:
        fams = [f for f in fams if f.name in QUICK_FAMILIES]
    cases = [c for c in CASES if re.search(args.cases, c.name) and (c.quick or not args.quick)]
    return [(c, f) for c in cases for f in fams if f.name == FULL_FAMILY or c.core or c.quick]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    merge_cmd = shlex.split(args.merge_cmd) if args.merge_cmd else [str(REPO / ".venv/bin/merge")]
    mk_py = ensure_mergekit(Path(args.mergekit_venv).resolve())
    ours = our_methods(merge_cmd)
    pairs = select(args)
    family_paths = {f.name: build_family(f, work / "models") for f in {f for _, f in pairs}}

    results: list[Result] = []
    mk_jobs: list[dict] = []
    our_jobs: list[tuple[Result, Path, Path]] = []
    for case, fam in pairs:
        res = Result(case.name, case.method, fam.name, fam.dtype, fam.layout, case.random)
        key = f"{case.name}@{fam.name}"
        recipe, out_dir = work / "recipes" / f"{key}.yaml", work / "out" / key
        write_recipe(case, fam, family_paths[fam.name], recipe)
        results.append(res)
        mk_jobs.append({"config": str(recipe), "out": str(out_dir / "mergekit"), "seed": args.seed})
        if case.method not in ours:
            res.status = "not-in-ours"
        else:
            our_jobs.append((res, recipe, out_dir / "ours"))

    print(
        f"{len(pairs)} merges per tool; mergekit in {mk_py.parent.parent}, ours: "
        f"{' '.join(merge_cmd)} --chunk-size {args.chunk_size}",
        flush=True,
    )
    with ThreadPoolExecutor(max_workers=args.jobs + 1) as pool:
        mk_future = pool.submit(run_mergekit, mk_py, mk_jobs, work)
        our_futures = [
            (res, pool.submit(run_ours, merge_cmd, r, o, args)) for res, r, o in our_jobs
        ]
        our_done = {id(res): f.result() for res, f in our_futures}
        mk_done = mk_future.result()

    for res, job, mk in zip(results, mk_jobs, mk_done, strict=False):
        res.secs_mk = mk["secs"]
        ok_ours, msg_ours, res.secs_ours = our_done.get(id(res), (False, "", 0.0))
        finish(res, mk, ok_ours, msg_ours, Path(job["out"]).parent, family_paths[res.family])

    print(render_table(results))
    (work / "results.json").write_text(json.dumps([r.as_json() for r in results], indent=1))
    (work / "results.md").write_text(render_markdown(results, args))
    print(f"\nwritten: {work / 'results.md'}, {work / 'results.json'}")
    return 0


def finish(res: Result, mk: dict, ok_ours: bool, msg_ours: str, out: Path, paths: dict) -> None:
    """Compare one case's outputs, or record which tool failed and why."""
    if res.status == "not-in-ours":
        res.message = "mergekit ok" if mk["ok"] else f"mergekit: {mk['error']}"
        return
    if not mk["ok"] or not ok_ours:
        res.status = {
            (False, False): "both-failed",
            (False, True): "mk-failed",
            (True, False): "ours-failed",
        }[(mk["ok"], ok_ours)]
        parts = ([f"mergekit: {mk['error']}"] if not mk["ok"] else []) + (
            [f"ours: {msg_ours}"] if not ok_ours else []
        )
        res.message = " ".join("; ".join(parts).split())  # one line
        return
    if res.random:
        compare_random(res, out / "mergekit", out / "ours", paths["base"])
    else:
        compare_exact(res, out / "mergekit", out / "ours")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mergekit-venv", default=str(REPO / "bench/work/mergekit-venv"))
    p.add_argument("--merge-cmd", default=None, help="our command (default: .venv/bin/merge)")
    p.add_argument("--merge-args", default="", help="extra options for our command")
    p.add_argument("--chunk-size", default="16KiB", help="our --chunk-size (default 16KiB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="one case per method, two families")
    p.add_argument("--cases", default=".", help="regex on case names")
    p.add_argument("--families", default=".", help="regex on family names")
    p.add_argument("--jobs", type=int, default=2, help="our merges run at once (default 2)")
    p.add_argument("--work", default=str(REPO / "bench/work/parity"))
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())

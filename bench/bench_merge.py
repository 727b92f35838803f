"""Time ``merge`` for each registered method against the I/O floor measured in the same run.

    .venv/bin/python bench/bench_merge.py --size tiny            # smoke run, seconds
    .venv/bin/python bench/bench_merge.py --size 1b              # default: 1B models, minutes

For each method the script writes a recipe over the ingredients of ``bench/make_models.py``
(created when missing), then runs, each as a child process measured with ``os.wait4``:

- the floor: read every input file of that recipe once (16 MiB ``readinto`` blocks, through
  the page cache) and write an output-sized file once, ending with ``fsync`` as the merge does;
- ``.venv/bin/merge RECIPE OUT --quiet --force``.

Cache: every input is read once, untimed, before the first measurement, so the floor and the
merges all read from a warm page cache (the machine must hold the inputs in RAM; the script
says when it cannot). Each output is written to a fresh file and deleted after measuring.

Printed (and appended to ``--results`` with ``--label``): wall time, CPU time (user + system)
and peak RSS of the merge, the floor's, and the merge/floor ratios; then the median of five
runs of ``merge --help`` and ``merge validate``. "other load" is the number of cores other
processes kept busy during the merge (the most of any repeat): wall times are only
comparable between runs where it is near 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# the project's virtual environment; elsewhere (a GPU machine with torch preinstalled) the
# running interpreter, with mergekit_like found through PYTHONPATH
PYTHON = ROOT / ".venv" / "bin" / "python"
MERGE = [str(ROOT / ".venv" / "bin" / "merge")]
if not PYTHON.exists():
    PYTHON, MERGE = Path(sys.executable), [sys.executable, "-m", "mergekit_like"]
BLOCK = 16 * 2**20
METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "slerp", "breadcrumbs")
# parameters each method is benchmarked with (keys a method does not declare are left out)
METHOD_PARAMS: dict[str, dict[str, object]] = {
    "linear": {"weight": 1.0},
    "task_arithmetic": {"weight": 0.5},
    "ties": {"weight": 1.0, "density": 0.5},
    "dare_ties": {"weight": 1.0, "density": 0.5},
    "breadcrumbs": {"weight": 1.0, "density": 0.9, "gamma": 0.01},
    "slerp": {"t": 0.5},
}


@dataclass(frozen=True)
class Measure:
    """One child process: wall seconds, CPU seconds (user + system), peak RSS bytes, and
    ``others``: the CPU cores that other processes kept busy meanwhile, on average."""

    wall: float
    cpu: float
    rss: int
    others: float = 0.0


def busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine since boot (all cores, /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# Runs the command in a forked child and prints the child's own rusage: the child's peak RSS
# then starts from this small launcher's, not from the benchmark process's (Linux carries the
# pre-exec memory of a fork into ru_maxrss).
_LAUNCHER = """
import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
print(os.waitstatus_to_exitcode(status), wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss)
"""


def run_child(argv: list[str], code: Path | None = None) -> Measure:
    """Run ``argv`` to completion and measure it alone (not the sum over children so far).

    ``code``: a folder put first on the child's PYTHONPATH (another mergekit_like copy).
    """
    path = os.pathsep.join(p for p in (str(code or ""), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    busy = busy_seconds()
    proc = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, *argv],
                          capture_output=True, text=True, env=env)
    busy = busy_seconds() - busy
    status, wall, cpu, rss = proc.stdout.split()
    if int(status) != 0 or proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({status}):\n{proc.stderr}")
    others = max(0.0, (busy - float(cpu)) / float(wall))
    return Measure(float(wall), float(cpu), int(rss) * 1024, others)


def floor_io(out: Path, out_bytes: int, inputs: list[Path]) -> None:
    """Read every input once, write ``out_bytes`` to ``out`` once, fsync, delete it.

    Like the merge's writer, it starts each block's write-back as soon as it is written
    (``sync_file_range``), then fsyncs. Writes the seconds spent reading and writing to
    ``out`` + '.times'.
    """
    from mergekit_like.io.writer import writeback_starter

    start_writeback = writeback_starter()
    t0 = time.perf_counter()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    for path in inputs:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    t1 = time.perf_counter()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < out_bytes:
            n = os.write(fd, view[: min(out_bytes - done, BLOCK)])
            if start_writeback is not None:  # as the merge's writer does
                start_writeback(fd, done, n)
            done += n
        os.fsync(fd)
    finally:
        os.close(fd)
        out.unlink()
    Path(f"{out}.times").write_text(f"{t1 - t0} {time.perf_counter() - t1}")


def warm(paths: list[Path]) -> None:
    """Read files once so that every later read comes from the page cache."""
    buf = bytearray(BLOCK)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def recipe_for(method: str, models: Path) -> dict[str, object] | None:
    """A recipe merging the benchmark family with ``method``; None when not registered."""
    from mergekit_like.methods import REGISTRY

    spec = REGISTRY.get(method)
    if spec is None:
        return None
    n = max(spec.min_models, min(3, spec.max_models or 3))
    model_keys = {i.alias or f for f, i in spec.model_params.model_fields.items()}
    global_keys = {i.alias or f for f, i in spec.params.model_fields.items()}
    wanted = METHOD_PARAMS.get(method, {})
    per_model = {k: v for k, v in wanted.items() if k in model_keys}
    glob = {k: v for k, v in wanted.items() if k in global_keys and k not in model_keys}
    recipe: dict[str, object] = {"merge_method": method}
    if spec.base == "required":
        recipe["base_model"] = str(models / "base")
    recipe["models"] = [{"model": str(models / f"ft{i + 1}"),
                         **({"parameters": per_model} if per_model else {})} for i in range(n)]
    if glob:
        recipe["parameters"] = glob
    return recipe


def input_files(recipe: dict[str, object]) -> list[Path]:
    refs = [m["model"] for m in recipe["models"]]  # type: ignore[index,union-attr]
    if "base_model" in recipe:
        refs.append(recipe["base_model"])
    return [Path(r) / "model.safetensors" for r in refs]  # type: ignore[arg-type]


def machine() -> str:
    """One paragraph describing the machine: CPU, cores, RAM, disk, versions."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    disk = shutil.disk_usage(HERE)
    torch_version = subprocess.run([str(PYTHON), "-c", "import torch; print(torch.__version__,"
                                    " torch.get_num_threads())"],
                                   capture_output=True, text=True).stdout.split()
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.1f} GiB RAM, disk {disk.total / 2**30:.0f} GiB "
            f"({disk.free / 2**30:.0f} GiB free), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch_version[0]} "
            f"({torch_version[1]} threads)")


def git_state() -> str:
    """The commit benchmarked, with '-dirty' when the working tree has changes."""
    out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def median_time(argv: list[str], code: Path | None, runs: int = 5) -> float:
    return statistics.median(run_child(argv, code).wall for _ in range(runs))


def fmt_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    """Benchmark every registered method at ``--size``; print a markdown report."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "floor":  # internal: the floor, run as a child process
        floor_io(Path(args[1]), int(args[2]), [Path(a) for a in args[3:]])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("tiny", "250m", "1b"), default="1b")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--repeat", type=int, default=1, help="runs of each; medians reported")
    p.add_argument("--label", default="", help="heading of this run in --results")
    p.add_argument("--results", type=Path, default=None,
                   help="append the report to this markdown file (e.g. bench/RESULTS.md)")
    p.add_argument("--extra", default="",
                   help='more arguments for merge, e.g. --extra="--chunk-size 32MiB"')
    p.add_argument("--clean", action="store_true", help="delete the models afterwards")
    p.add_argument("--code", type=Path, default=None,
                   help="a folder holding another copy of the mergekit_like package to time "
                        "instead of the working tree's (e.g. a snapshot from before a change)")
    ns = p.parse_args(args)

    work = HERE / "work" / ns.size
    models = work / "models"
    # make_models imports torch: run it as a child so this process stays small
    subprocess.run([str(PYTHON), str(HERE / "make_models.py"), "--size", ns.size], check=True)
    files = sorted(models.glob("*/model.safetensors"))
    assert files, f"no models in {models}"
    total = sum(f.stat().st_size for f in files)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if total * 1.3 > ram:
        print(f"warning: inputs ({total / 2**30:.1f} GiB) may not stay in the page cache")
    (work / "recipes").mkdir(parents=True, exist_ok=True)
    (work / "out").mkdir(exist_ok=True)
    warm(files)

    gpu = "cuda" in ns.extra
    gpu_peak_file = work / "gpu_peak.txt"
    # on a GPU the merge runs through a wrapper that records torch's peak GPU memory
    merge_cmd = ([str(PYTHON), str(HERE / "gpu_merge.py"), str(gpu_peak_file)] if gpu
                 else MERGE)
    rows: list[list[str]] = []
    notes: list[str] = []
    recipes: dict[str, Path] = {}
    for method in ns.methods:
        recipe = recipe_for(method, models)
        if recipe is None:
            notes.append(f"{method}: not registered, skipped")
            print(notes[-1], flush=True)
            continue
        path = work / "recipes" / f"{method}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        recipes[method] = path
        inputs = input_files(recipe)
        out_bytes = inputs[0].stat().st_size
        out = work / "out" / method
        floors, merges, split, gpu_peaks = [], [], [], []
        floor_file = work / "floor.bin"
        for _ in range(ns.repeat):
            warm(inputs)
            floors.append(run_child([sys.executable, __file__, "floor", str(floor_file),
                                     str(out_bytes), *map(str, inputs)]))
            split.append([float(x) for x in Path(f"{floor_file}.times").read_text().split()])
            warm(inputs)
            merges.append(run_child([*merge_cmd, str(path), str(out), "--quiet", "--force",
                                     *shlex.split(ns.extra)], ns.code))
            if gpu:
                gpu_peaks.append(int(gpu_peak_file.read_text().split()[0]))
            shutil.rmtree(out)
        f = Measure(statistics.median(m.wall for m in floors),
                    statistics.median(m.cpu for m in floors), max(m.rss for m in floors))
        m = Measure(statistics.median(m.wall for m in merges),
                    statistics.median(m.cpu for m in merges), max(m.rss for m in merges))
        f_read = statistics.median(r for r, _ in split)
        f_write = statistics.median(w for _, w in split)
        others = max(x.others for x in merges)
        rows.append([method, str(len(inputs)), f"{m.wall:.1f}",
                     f"{f.wall:.1f} ({f_read:.1f} + {f_write:.1f})",
                     f"**{m.wall / f.wall:.2f}x**", f"{m.cpu:.1f}", f"{f.cpu:.1f}",
                     f"{m.cpu / f.cpu:.2f}x", f"{m.rss / 2**20:.0f}", f"{f.rss / 2**20:.0f}",
                     f"{others:.1f}"] + ([f"{max(gpu_peaks) / 2**20:.0f}"] if gpu else []))
        print(fmt_row(rows[-1]), flush=True)

    any_recipe = next(iter(recipes.values()))
    t_help = median_time([*MERGE, "--help"], ns.code)
    t_validate = median_time([*MERGE, "validate", str(any_recipe)], ns.code)
    from mergekit_like.io.safetensors_header import read_header

    params = sum(i.numel for i in read_header(files[0]).values())
    lines = [
        f"### {ns.label or ns.size}", "",
        f"Machine: {machine()}.", "",
        f"Code: `{git_state()}`" + (f", package from `{ns.code}`" if ns.code else "") + ".",
        "",
        f"Ingredients: `--size {ns.size}`, Llama-shaped, {params / 1e6:.0f}M parameters "
        f"each in bfloat16 ({files[0].stat().st_size / 1e9:.2f} GB per model), base + 3 "
        f"fine-tunes; page cache warm for the floor and the merges; {ns.repeat} run(s) each, "
        f"median.", "",
        f"Command: `.venv/bin/python bench/bench_merge.py --size {ns.size}"
        + (f" --methods {' '.join(ns.methods)}" if list(ns.methods) != list(METHODS) else "")
        + (f" --repeat {ns.repeat}" if ns.repeat != 1 else "")
        + (f' --extra="{ns.extra}"' if ns.extra else "")
        + (f" --code {ns.code}" if ns.code else "") + "`", "",
        fmt_row(["method", "inputs", "wall s", "floor wall s (read + write)", "wall ratio", "CPU s",
                 "floor CPU s", "CPU ratio", "peak RSS MiB", "floor RSS MiB",
                 "other load"] + (["peak GPU MiB"] if gpu else [])),
        fmt_row(["---"] * (12 if gpu else 11)),
        *(fmt_row(r) for r in rows), "",
        f"`merge --help`: {t_help:.2f} s; `merge validate {any_recipe.name}`: "
        f"{t_validate:.2f} s (median of 5).", "",
        *(f"- {n}" for n in notes), "",
    ]
    report = "\n".join(lines)
    print("\n" + report)
    if ns.results:
        with open(ns.results, "a") as fh:
            fh.write("\n" + report)
    if ns.clean:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory and time of the data-driven merges (fisher, regmean, adamerging) against a
linear merge.

    .venv/bin/python bench/bench_datamerge.py --size tiny     # smoke run, seconds
    .venv/bin/python bench/bench_datamerge.py --size 250m     # K = 4 ingredients, minutes
    .venv/bin/python bench/bench_datamerge.py --size 250m --k 2   # the first two only
    .venv/bin/python bench/bench_datamerge.py --methods fisher --hold disk  # a pass a group

The ingredients are ``bench/make_models.py``'s family (base, ft1, ft2, ft3: K = 4 Llama
models in bfloat16) written to ``bench/work/datamerge-<size>/models``, with a word-level
tokenizer (one word per id) saved into the first model and a text file of random words as
the evaluation data (task: perplexity). Each recipe runs as a child process
(``merge RECIPE OUT --quiet --force``, measured with ``os.wait4``) twice with an empty user
cache first: the first run computes the statistics (cache miss), the second reuses them
(hit). Printed: wall time and peak RSS of each run, and for scale the bytes of one
ingredient in float32 (the live model) and of all K ingredients in float32.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
MERGE = [str(ROOT / ".venv" / "bin" / "merge")]
if not PYTHON.exists():
    PYTHON, MERGE = Path(sys.executable), [sys.executable, "-m", "mergekit_like"]
MODELS = ("base", "ft1", "ft2", "ft3")
OPTIONS = {
    "fisher": {"num_examples": 2, "batch_size": 1},
    "regmean": {"num_examples": 4, "batch_size": 2},
    "adamerging": {"num_examples": 4, "steps": 2, "batch_size": 2},
    "linear": {},
}


def prepare(size: str) -> Path:
    """Write the model family (once), the tokenizer into the first model, and data.txt."""
    work = HERE / "work" / f"datamerge-{size}"
    models = work / "models"
    if not (models / "ft3" / "model.safetensors").exists():
        subprocess.run(
            [str(PYTHON), str(HERE / "make_models.py"), "--size", size, "--root", str(models)],
            check=True,
        )
    vocab = json.loads((models / "base" / "config.json").read_text())["vocab_size"]
    if not (models / "base" / "tokenizer.json").exists():
        from tokenizers import Tokenizer, pre_tokenizers
        from tokenizers import models as tok_models
        from transformers import PreTrainedTokenizerFast

        words = {f"w{i}": i for i in range(vocab - 1)} | {"<unk>": vocab - 1}
        tok = Tokenizer(tok_models.WordLevel(words, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="<unk>", eos_token="<unk>"
        ).save_pretrained(models / "base")
    rng = random.Random(0)
    text = " ".join(f"w{rng.randrange(vocab - 1)}" for _ in range(64 * 40))
    (work / "data.txt").write_text(text)
    return work


def recipe(work: Path, method: str, k: int = len(MODELS)) -> Path:
    """The recipe of ``method`` over the first ``k`` models, data.txt as perplexity data."""
    import yaml

    names = MODELS[1:k] if method == "adamerging" else MODELS[:k]  # base + K - 1 vectors
    data: dict[str, object] = {
        "merge_method": method,
        "models": [
            {"model": str(work / "models" / m), "parameters": {"weight": 1.0}} for m in names
        ],
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }
    if method == "adamerging":
        data["base_model"] = str(work / "models" / MODELS[0])
    if method != "linear":
        data["evaluation"] = {
            "task": "perplexity",
            "data": str(work / "data.txt"),
            "max_length": 64,
            "test_split": None,
            "batch_size": 4,
        }
        data["datamerge"] = OPTIONS[method]
    hold = OPTIONS[method].get("hold", "memory")
    path = work / f"{method}-k{k}{'-disk' if hold == 'disk' else ''}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print one line per run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="250m", choices=("tiny", "250m", "1b"))
    p.add_argument("--methods", nargs="+", default=["linear", "fisher", "regmean"])
    p.add_argument(
        "--runs",
        nargs="+",
        default=["miss", "hit"],
        choices=("miss", "hit"),
        help="runs of each data-driven method (miss: the first, on an empty cache)",
    )
    p.add_argument(
        "--k",
        type=int,
        default=len(MODELS),
        choices=range(2, len(MODELS) + 1),
        help="ingredients: the first K of base, ft1, ft2, ft3",
    )
    p.add_argument(
        "--hold",
        default="memory",
        choices=("memory", "disk"),
        help="datamerge.hold of fisher and adamerging",
    )
    ns = p.parse_args(argv)
    OPTIONS["adamerging"]["hold"] = OPTIONS["fisher"]["hold"] = ns.hold
    work = prepare(ns.size)
    numel = sum(
        info["shape"][0] * (info["shape"][1] if len(info["shape"]) > 1 else 1)
        for name, info in _header(work / "models" / "base" / "model.safetensors").items()
        if name != "__metadata__"
    )
    gib = 2**30
    print(
        f"size {ns.size}: K = {ns.k} ingredients of {numel / 1e6:.0f}M parameters; "
        f"one in float32 {4 * numel / gib:.2f} GiB, all K {4 * ns.k * numel / gib:.2f} "
        "GiB"
    )
    # one per invocation: they may run at once
    cache = work / f"cache-{'-'.join(ns.methods)}-k{ns.k}"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "MERGEKIT_LIKE_CACHE": str(cache)}
    for method in ns.methods:
        path = recipe(work, method, ns.k)
        for run in ns.runs if method not in ("linear", "adamerging") else ("-",):
            out = work / f"out-{method}-k{ns.k}"
            wall, rss = measure([*MERGE, str(path), str(out), "--quiet", "--force"], env)
            print(f"{method:8s} cache {run:4s}: wall {wall:7.1f} s  peak RSS {rss / gib:.2f} GiB")
    return 0


def _header(path: Path) -> dict[str, dict]:
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


if __name__ == "__main__":
    sys.exit(main())

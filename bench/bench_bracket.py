"""Micro-benchmark: the rank windows' statistics rounds when the first chunk misleads.

    .venv/bin/python bench/bench_bracket.py               # a 128256 x 2048 embedding
    .venv/bin/python bench/bench_bracket.py --rows 16384  # smaller, seconds

The bracket round (:mod:`mergekit_like.methods.rank_bracket`) brackets each boundary value
from a sample of the tensor's first chunk. Real fine-tunes leave some rows alone (an
embedding's unused tokens): their task vectors are zero there, so a first chunk of touched
rows misjudges the ranks. This script times TIES's statistics rounds over one tensor in
row chunks, as the executor runs them with the C kernels, for fine-tunes whose last
``--untouched`` share of rows (the first ones with ``--first``) equals the base, and for
none, and prints which rounds were wanted (0: the first bracket round, 1: the second,
2-3: the radix rounds) and the seconds each took. (That every way keeps the same entries
is the tests' business: tests/methods/test_rank_bracket.py.)
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from mergekit_like.execute.memory import tune_allocator
from mergekit_like.methods.kernels import Kernels
from mergekit_like.methods.spec import TensorContext
from mergekit_like.methods.ties import TIES

tune_allocator()  # as the merge runs (mergekit_like.execute.memory)


def family(rows: int, cols: int, untouched: float, seed: int,
           first: bool = False) -> tuple[list, torch.Tensor]:
    """A bfloat16-valued base and three fine-tunes (float32), the last rows left alone (the
    first ones with ``first``)."""
    gen = torch.Generator().manual_seed(seed)
    base = (0.02 * torch.randn(rows, cols, generator=gen)).bfloat16().float()
    xs = []
    keep = rows - int(untouched * rows)
    for _ in range(3):
        x = (base + 0.002 * torch.randn(rows, cols, generator=gen)).bfloat16().float()
        alone = slice(0, rows - keep) if first else slice(keep, rows)
        x[alone] = base[alone]
        xs.append(x)
    return xs, base


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=128256)
    p.add_argument("--cols", type=int, default=2048)
    p.add_argument("--chunk-rows", type=int, default=2048, help="rows per chunk (16 MiB)")
    p.add_argument("--untouched", type=float, nargs="+", default=[0.0, 0.3, 0.7])
    p.add_argument("--density", type=float, default=0.5)
    p.add_argument("--first", action="store_true", help="the rows left alone come first")
    ns = p.parse_args(argv)
    kernels = Kernels("compiled")
    if kernels.native() is None:
        print("no C kernels here", file=sys.stderr)
        return 1
    mps = [TIES.model_params.model_validate({"weight": 1.0, "density": ns.density})] * 3
    params = TIES.params.model_validate({})
    print(f"{ns.rows} x {ns.cols}, chunks of {ns.chunk_rows} rows, density {ns.density}, "
          f"{torch.get_num_threads()} threads")
    for untouched in ns.untouched:
        xs, base = family(ns.rows, ns.cols, untouched, 1, ns.first)
        stats = TIES.stats(tuple(base.shape), 32, mps, params, TensorContext("t", 0,
                                                                              kernels=kernels))
        chunks = [(r, min(ns.rows, r + ns.chunk_rows)) for r in range(0, ns.rows, ns.chunk_rows)]
        took = []
        for round_ in range(stats.rounds):
            if not stats.wants(round_):
                continue
            t0 = time.perf_counter()
            for a, b in chunks:
                stats.observe(round_, [x[a:b] for x in xs], base[a:b], a * ns.cols)
            stats.finish(round_)
            took.append(f"round {round_}: {time.perf_counter() - t0:.2f} s")
        print(f"untouched rows {untouched:.0%}: " + ", ".join(took))
    return 0


if __name__ == "__main__":
    sys.exit(main())

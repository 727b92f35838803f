"""CPU seconds of the byte-exact C kernels against the torch operations they replace.

    .venv/bin/python bench/bench_exact_kernels.py [--rounds 3]

In one process, on one 4096 x 1024 tensor per model (bfloat16 and float32), alternating the
two ways round by round (so a machine shared with other jobs slows both alike): the linear
merge of three models (``native/soup.c`` against ``addcmul_``), the Karcher mean of three
(``native/sphere.c`` against its torch chain), and the introsort replay of one bfloat16 TIES
cut (by blocks against one entry at a time). Each pair is checked to give the same bytes.
Prints the median CPU seconds (``time.process_time``: all threads) of each way.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mergekit_like.methods.introsort import settled, sort_keys
from mergekit_like.methods.karcher import karcher_whole
from mergekit_like.methods.kernels import Kernels
from mergekit_like.methods.linear import LinearModelParams, LinearParams, linear_merge
from mergekit_like.methods.spec import TensorContext

SHAPE = (4096, 1024)


def timed(fn):  # noqa: ANN001, ANN201
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def cases(dtype: torch.dtype) -> dict[str, tuple]:  # type: ignore[type-arg]
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(SHAPE, generator=gen) * 0.02
    xs = [(base + 0.002 * torch.randn(SHAPE, generator=gen)).to(dtype) for _ in range(3)]
    params = [LinearModelParams(weight=w) for w in (0.2, 0.5, 0.3)]
    c_ctx, t_ctx = TensorContext("w"), TensorContext("w", kernels=Kernels(native_kernels=False))
    sphere = Kernels().sphere()
    out = {
        "linear": (
            lambda: linear_merge(xs, None, params, LinearParams(), c_ctx),
            lambda: linear_merge(xs, None, params, LinearParams(), t_ctx),
        ),
        "karcher": (lambda: karcher_whole(xs, sphere=sphere), lambda: karcher_whole(xs)),
    }
    if dtype == torch.bfloat16:
        keys = sort_keys((xs[0].float() - base.to(dtype).float()).abs(), True)
        cut = [keys.numel() // 2]
        out["introsort"] = (
            lambda: settled(keys, cut, blocks=True)[1],
            lambda: settled(keys, cut, blocks=False)[1],
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    ns = p.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    print("| case | dtype | C s | torch s | speed-up |\n|---|---|---|---|---|")
    for dtype in (torch.bfloat16, torch.float32):
        for name, (fast, slow) in cases(dtype).items():
            a, b = [], []
            for _ in range(ns.rounds):
                ta, ra = timed(fast)
                tb, rb = timed(slow)
                assert same(ra, rb), f"{name} {dtype}: the bytes differ"
                a.append(ta)
                b.append(tb)
            fa, fb = statistics.median(a), statistics.median(b)
            print(f"| {name} | {str(dtype)[6:]} | {fa:.3f} | {fb:.3f} | {fb / fa:.1f}x |")


if __name__ == "__main__":
    main()

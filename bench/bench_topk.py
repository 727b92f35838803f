"""Micro-benchmark: ways to keep the k largest magnitudes of a task vector (TIES trimming).

    .venv/bin/python bench/bench_topk.py                 # 16.8M entries (one 8192 x 2048 MLP)
    .venv/bin/python bench/bench_topk.py --numel 262668288   # a 128256 x 2048 embedding

Compares, on one float32 tensor of bfloat16-valued task-vector entries (as in a merge):

- ``topk``: ``torch.topk(abs, k, sorted=False)`` and scatter the indices (what mergekit does);
- ``kthvalue``: the k-th largest magnitude by ``torch.kthvalue``, then ``abs >= threshold``;
- ``radix``: the exact k-th largest by two histogram passes over the float bits
  (:func:`radix_topk_mask`), then ``abs > threshold`` plus the first entries equal to it.

All three keep exactly k entries; the script checks they keep the same magnitudes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import torch

from mergekit_like.execute.memory import tune_allocator

tune_allocator()  # as the merge runs (mergekit_like.execute.memory)


def topk_mask(a: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(a.numel(), dtype=torch.bool)
    mask[torch.topk(a.reshape(-1), k, sorted=False).indices] = True
    return mask.view_as(a)


def kthvalue_mask(a: torch.Tensor, k: int) -> torch.Tensor:
    flat = a.reshape(-1)
    thr = flat.kthvalue(flat.numel() - k + 1).values
    return _exactly_k(a, thr, k)


def radix_topk_mask(a: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest of non-negative float32 ``a`` (ties at the threshold: first by position).

    Non-negative floats order like their bit patterns as int32, so the k-th largest is found
    from a histogram of the upper 16 bits, then one of the lower 16 bits inside the bucket
    that holds it: O(n), two ``bincount`` passes, no sort.
    """
    bits = a.reshape(-1).view(torch.int32)
    hi = bits >> 16
    counts = torch.bincount(hi, minlength=1 << 15)
    above = counts.flip(0).cumsum(0).flip(0)  # entries with upper bits >= b
    b = int((above >= k).nonzero().max())
    need = k - (int(above[b + 1]) if b + 1 < above.numel() else 0)
    low = bits[hi == b] & 0xFFFF
    low_counts = torch.bincount(low, minlength=1 << 16)
    low_above = low_counts.flip(0).cumsum(0).flip(0)
    v = int((low_above >= need).nonzero().max())
    thr = torch.tensor((b << 16) | v, dtype=torch.int32).view(torch.float32)
    return _exactly_k(a, thr, k)


def _exactly_k(a: torch.Tensor, thr: torch.Tensor, k: int) -> torch.Tensor:
    mask = a > thr
    extra = k - int(torch.count_nonzero(mask))
    if extra > 0:
        ties = (a.reshape(-1) == thr).nonzero().squeeze(1)[:extra]
        mask.view(-1)[ties] = True
    return mask


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--numel", type=int, default=8192 * 2048)
    p.add_argument("--density", type=float, default=0.5)
    ns = p.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    base = (torch.randn(ns.numel, generator=gen) * 0.02).bfloat16().float()
    ft = (base + torch.randn(ns.numel, generator=gen) * 0.002).bfloat16().float()
    a = (ft - base).abs()
    k = int(ns.density * ns.numel)
    ways: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
        "topk": topk_mask, "kthvalue": kthvalue_mask, "radix": radix_topk_mask}
    ref = None
    print(f"{ns.numel / 1e6:.1f}M entries, keep {k}, {torch.get_num_threads()} threads")
    for name, fn in ways.items():
        t = time.perf_counter()
        mask = fn(a, k)
        dt = time.perf_counter() - t
        kept = torch.sort(a[mask]).values
        assert int(mask.sum()) == k, name
        if ref is None:
            ref = kept
        assert torch.equal(kept, ref), f"{name} keeps other magnitudes"
        print(f"  {name:<9} {dt:7.3f} s  {ns.numel / dt / 1e6:7.1f} M entries/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

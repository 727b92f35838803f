"""The running sum: in memory within the budget, else a safetensors file updated in place."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from mergekit_like.soups.ingredients import SUM_FILE, RunningSum


def test_running_sum_in_memory_and_on_disk(tmp_path):
    shapes = {"a.weight": (3, 4), "b.bias": (5,)}
    gen = torch.Generator().manual_seed(0)
    xs = [{n: torch.randn(s, generator=gen) for n, s in shapes.items()} for _ in range(3)]
    for budget, on_disk in ((10**6, False), (16, True)):
        rs = RunningSum(shapes, budget, tmp_path)
        assert rs.on_disk is on_disk
        for x in xs:
            for n, t in x.items():
                rs.add(n, t)
        for n in shapes:
            torch.testing.assert_close(rs.get(n), xs[0][n] + xs[1][n] + xs[2][n])
        if on_disk:
            stored = load_file(tmp_path / SUM_FILE)  # a valid safetensors file throughout
            torch.testing.assert_close(stored["a.weight"], sum(x["a.weight"] for x in xs))
        rs.close()
        assert not (tmp_path / SUM_FILE).exists()

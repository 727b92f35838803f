"""SCE worked by hand: select by variance, weight by energy, erase minority signs."""

from __future__ import annotations

import torch

from tests.methods.test_task_arithmetic import merge

BASE = torch.tensor([1.0, 2.0, 3.0, 4.0])
D1 = torch.tensor([1.0, -2.0, 0.0, 2.0])
D2 = torch.tensor([3.0, 2.0, 0.0, -1.0])


def test_sce_without_selection():
    out = merge("sce", [BASE + D1, BASE + D2], BASE, [{}, {}])
    w1, w2 = (1 + 4 + 0 + 4) / 4, (9 + 4 + 0 + 1) / 4
    w1, w2 = w1 / (w1 + w2), w2 / (w1 + w2)  # 9/23, 14/23
    # raw sums [4, 0, 0, 1] -> all +; agreeing: pos0 both, pos1 d2, pos2 none, pos3 d1
    expected = torch.tensor([(w1 * 1 + w2 * 3) / (w1 + w2), 2.0, 0.0, 2.0])
    torch.testing.assert_close(out, BASE + expected)


def test_sce_select_topk_keeps_highest_variance_positions():
    out = merge("sce", [BASE + D1, BASE + D2], BASE, [{}, {}], {"select_topk": 0.5})
    # variances [1, 4, 0, 2.25]: 3 non-zero, int(1.5) = 1 kept (pos1): d1 -2, d2 +2,
    # equal energies, sum 0 elects +: only d2 agrees -> 2
    torch.testing.assert_close(out, BASE + torch.tensor([0.0, 2.0, 0.0, 0.0]))

"""Process memory settings: glibc reuses step buffers, and hands free pages back on growth."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

FAULTS = """
import resource, sys, torch
from mergekit_like.execute.memory import tune_allocator
tuned = sys.argv[1] == "1" and tune_allocator()
for size in (4 * 2**20, 10 * 2**20):  # 16 MiB steps, then 40 MiB ones (counted)
    for _ in range(2):
        torch.empty(size).fill_(1.0)  # freed at once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.empty(size).fill_(1.0)
print(int(tuned), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc settings")
def test_tuned_allocator_reuses_freed_step_buffers_without_page_faults():
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0"}

    def faults(tune: str) -> tuple[int, int]:
        done = subprocess.run([sys.executable, "-c", FAULTS, tune], check=True, env=env,
                              capture_output=True, text=True)
        tuned, count = done.stdout.split()
        return int(tuned), int(count)

    tuned, with_tuning = faults("1")
    _, default = faults("0")
    assert tuned == 1
    assert default > 10 * 9000  # 40 MiB is 10240 pages of 4 KiB, faulted again each time
    # tuned: the heap grows once or twice at most (0-20 thousand), not once per step
    assert with_tuning < default // 3


TRIM = """
import torch
from mergekit_like.execute.memory import HeapTrimmer, tune_allocator
tune_allocator()
trim = HeapTrimmer(slack=64 * 2**20)
before = trim.resident()
held = [torch.ones(2**25) for _ in range(3)]  # 3 x 128 MiB in the heap
keep = torch.ones(16)  # allocated above them: the heap top cannot shrink past it
del held
grown = trim.resident() - before
print(grown >> 20, int(trim()), (trim.resident() - before) >> 20, int(trim()))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc_trim")
def test_heap_trimmer_hands_back_free_heap_pages_once_grown_by_its_slack():
    done = subprocess.run([sys.executable, "-c", TRIM], check=True, capture_output=True,
                          text=True, env={**os.environ, "THP_MEM_ALLOC_ENABLE": "0"})
    grown, trimmed, after, again = (int(v) for v in done.stdout.split())
    assert grown > 300  # the freed buffers stayed resident, as the tuned heap keeps them
    assert trimmed == 1 and after < 64 and again == 0

"""How the merge process uses memory: glibc heap settings for step-sized buffers.

Every step of a merge allocates and frees tensors of a few to tens of MB. These helpers let
glibc reuse those buffers instead of faulting fresh pages for each step
(:func:`tune_allocator`), and hand free heap pages back once the process has grown
(:class:`HeapTrimmer`). Both do nothing outside Linux with glibc.
"""

from __future__ import annotations

import os

MALLOC_SETTINGS = {-3: 256 * 2**20, -1: 2**30, -2: 64 * 2**20}
"""glibc ``mallopt``: M_MMAP_THRESHOLD 256 MiB, M_TRIM_THRESHOLD 1 GiB, M_TOP_PAD 64 MiB."""


def tune_allocator() -> bool:
    """Let freed step buffers be reused instead of handed back to the kernel (glibc only).

    Every step allocates and frees tensors of a few to tens of MB. By default glibc serves
    the larger ones with fresh ``mmap`` regions and gives heap memory back as soon as it is
    free, so every step pays page faults (zeroed pages) for memory it just released. Raising
    the mmap and trim thresholds keeps those buffers in the heap for the next step: peak
    memory is unchanged (the working set is bounded by the chunk size), and the merge CPU
    time falls by 5-35% (bench/RESULTS.md). Transparent huge pages for torch's allocations
    (``THP_MEM_ALLOC_ENABLE=1``) were tried and are slower here: the kernel compacts memory on
    each fault of a fresh huge page. Returns whether the settings were applied.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(option, value) == 1 for option, value in MALLOC_SETTINGS.items())


class HeapTrimmer:
    """Hands the heap's free pages back to the kernel when the process has grown by ``slack``.

    With :func:`tune_allocator` the heap keeps freed buffers for reuse; a small allocation
    that outlives a step can split a large free buffer, so the next step's buffer of the
    same size comes from fresh memory and the heap slowly grows. Called after each tensor,
    this bounds that growth: once the resident size is ``slack`` bytes above what it was
    after the last trim, ``malloc_trim`` releases every free page (holes included). Trimming
    every time instead makes each step fault its pages again (linear merges took 60% more
    CPU). glibc on Linux only; elsewhere a no-op.
    """

    def __init__(self, slack: int = 256 * 2**20) -> None:
        import platform

        self.slack = slack
        self.enabled = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
        self._base = self.resident() if self.enabled else 0

    @staticmethod
    def resident() -> int:
        """The process's resident memory in bytes (``/proc/self/statm``)."""
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __call__(self) -> bool:
        """Trim if the process grew by more than ``slack``; whether it trimmed."""
        import ctypes

        if not self.enabled or self.resident() <= self._base + self.slack:
            return False
        ctypes.CDLL(None).malloc_trim(0)
        self._base = self.resident()
        return True

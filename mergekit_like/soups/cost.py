"""What a soup candidate cost: time to build its weights, time to score it, peak memory.

Every candidate a soup method scores (an ingredient on its own, a greedy step, a subset, an
alpha, a learned-soup run) carries a :class:`Cost`; the report lists them beside the scores,
so a slow or memory-hungry search shows where its time went.

Example::

    watch = Stopwatch()
    build_weights()
    build = watch.lap()
    score()
    cost = Cost(build, watch.lap())
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size so far, in bytes (None where the platform has no
    ``resource`` module, i.e. Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux: KiB


class Stopwatch:
    """Wall-clock laps: each :meth:`lap` returns the seconds since the previous one."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self) -> float:
        """Seconds since the stopwatch started or last lapped."""
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return elapsed


@dataclass(frozen=True)
class Cost:
    """One candidate's cost.

    Attributes:
        build_s: wall seconds to put its weights into the live model (read, mix, copy).
        eval_s: wall seconds to score it.
        peak_rss_bytes: the process's peak RSS once it was scored (the peak so far, so it
            never falls from one candidate to the next).
    """

    build_s: float
    eval_s: float
    peak_rss_bytes: int | None = field(default_factory=peak_rss_bytes)

    def as_dict(self) -> dict[str, float | int | None]:
        """Flat numbers for the JSON report."""
        return {"build_s": self.build_s, "eval_s": self.eval_s,
                "peak_rss_bytes": self.peak_rss_bytes}


def cost_dict(cost: Cost | None) -> dict[str, float | int | None]:
    """``cost.as_dict()``, or the same keys set to None for a candidate that was not timed."""
    if cost is None:
        return {"build_s": None, "eval_s": None, "peak_rss_bytes": None}
    return cost.as_dict()

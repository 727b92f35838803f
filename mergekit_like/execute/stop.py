"""Stopping a run from outside: SIGTERM is handled as Ctrl-C is.

``kill PID`` (SIGTERM, what a job scheduler or ``systemctl stop`` sends) raises
``KeyboardInterrupt`` in the main thread, so the run stops the way Ctrl-C stops it: one
line, and the partial output kept for ``--resume``. A rank of a multi-process run takes
the first SIGINT or SIGTERM only (a terminal's Ctrl-C and the spawning process's SIGTERM
may both arrive): a second one would break its cleanup.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the body runs, SIGTERM raises ``KeyboardInterrupt`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_once() -> None:
    """For a rank process: the first SIGINT or SIGTERM raises ``KeyboardInterrupt``; the
    ones after it are ignored while the rank stops."""

    def once(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, once)
    signal.signal(signal.SIGTERM, once)

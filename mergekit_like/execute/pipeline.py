"""The executor's pipeline: read ahead and write behind on one background thread.

Kept apart from what a step is (:mod:`mergekit_like.execute.executor`): :func:`run_pipeline` only
orders three callables, so its guarantees (order, one step read ahead, one result waiting
to be written, errors reaching the caller) are tested on plain numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


def run_pipeline(
    steps: Sequence[S],
    load: Callable[[S], T],
    run: Callable[[S, T], R],
    write: Callable[[S, R], None],
    *,
    prefetch: bool = True,
    read_ahead: Callable[[S], bool] = lambda step: True,
    split_io: bool = False,
) -> None:
    """``write(s, run(s, load(s)))`` for every step ``s``, in order.

    With ``prefetch``, ``load`` and ``write`` run on one background thread (never at the
    same time as each other) and ``run`` on the calling thread: step ``i + 1`` is loaded
    while step ``i`` runs, unless ``read_ahead(step)`` says it is too large (then it is
    loaded once step ``i`` is done), and at most one result waits to be written. With
    ``split_io`` too, writes get a thread of their own, so a read and a write overlap (for
    runs whose compute leaves the cores idle: a GPU merge); ``load`` and ``write`` must then
    not share state. Without ``prefetch``, everything runs in turn on the calling thread.
    Exceptions propagate to the caller; queued work is cancelled.
    """
    if not prefetch:
        for step in steps:
            write(step, run(step, load(step)))
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="merge-io")
    out_pool = ThreadPoolExecutor(1, thread_name_prefix="merge-write") if split_io else pool
    writes: deque[Future[None]] = deque()
    try:
        ahead = pool.submit(load, steps[0]) if steps else None
        for i, step in enumerate(steps):
            inputs = (ahead or pool.submit(load, step)).result()
            nxt = steps[i + 1] if i + 1 < len(steps) else None
            ahead = pool.submit(load, nxt) if nxt is not None and read_ahead(nxt) else None
            out = run(step, inputs)
            del inputs
            writes.append(out_pool.submit(write, step, out))
            del out
            while len(writes) > 1:
                writes.popleft().result()
        while writes:
            writes.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        out_pool.shutdown(wait=True, cancel_futures=True)

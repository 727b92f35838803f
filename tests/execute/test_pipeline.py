"""The read-ahead pipeline: order, one step ahead, one result behind, errors."""

from __future__ import annotations

import threading

import pytest

from mergekit_like.execute.pipeline import run_pipeline


class Log:
    """Records the order of pipeline events (thread-safe)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def add(self, kind: str, i: int) -> None:
        with self.lock:
            self.events.append((kind, i))

    def at(self, kind: str, i: int) -> int:
        return self.events.index((kind, i))


def pipeline(n: int, prefetch: bool, big: frozenset[int] = frozenset(),
             fail: tuple[str, int] | None = None,
             split_io: bool = False) -> tuple[Log, list[int]]:
    log, written = Log(), []

    def load(i: int) -> int:
        log.add("load", i)
        if fail == ("load", i):
            raise ValueError("load failed")
        return i * 10

    def run(i: int, x: int) -> int:
        log.add("run", i)
        if fail == ("run", i):
            raise ValueError("run failed")
        log.add("ran", i)
        return x + 1

    def write(i: int, y: int) -> None:
        log.add("write", i)
        if fail == ("write", i):
            raise ValueError("write failed")
        written.append(y)

    run_pipeline(list(range(n)), load, run, write, prefetch=prefetch,
                 read_ahead=lambda i: i not in big, split_io=split_io)
    return log, written


@pytest.mark.parametrize("prefetch", [True, False])
def test_pipeline_writes_every_result_in_order(prefetch):
    log, written = pipeline(7, prefetch)
    assert written == [i * 10 + 1 for i in range(7)]
    assert [i for k, i in log.events if k == "run"] == list(range(7))


def test_pipeline_reads_at_most_one_step_ahead_and_writes_behind():
    log, _ = pipeline(8, True)
    for i in range(8):
        if i >= 2:  # step i is loaded only after step i - 2 has run
            assert log.at("ran", i - 2) < log.at("load", i)
        if i >= 1:  # the previous result is written before the step after this one runs
            assert log.at("write", i - 1) < log.at("run", i + 1 if i + 1 < 8 else i)


def test_pipeline_loads_a_large_step_only_after_the_previous_ran():
    log, written = pipeline(6, True, big=frozenset({3}))
    assert log.at("ran", 2) < log.at("load", 3)
    assert written == [i * 10 + 1 for i in range(6)]


def test_pipeline_without_prefetch_runs_each_step_in_turn():
    log, _ = pipeline(3, False)
    assert log.events == [(k, i) for i in range(3) for k in ("load", "run", "ran", "write")]


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("stage", ["load", "run", "write"])
def test_pipeline_errors_reach_the_caller(prefetch, stage):
    with pytest.raises(ValueError, match=f"{stage} failed"):
        pipeline(6, prefetch, fail=(stage, 2))


@pytest.mark.parametrize("stage", ["load", "run", "write"])
def test_split_io_keeps_the_order_bounds_and_errors(stage):
    log, written = pipeline(9, True, split_io=True)
    assert written == [i * 10 + 1 for i in range(9)]
    for i in range(2, 8):  # still one step read ahead and one result behind
        assert log.at("ran", i - 2) < log.at("load", i)
        assert log.at("write", i - 1) < log.at("run", i + 1)
    with pytest.raises(ValueError, match=f"{stage} failed"):
        pipeline(6, True, fail=(stage, 2), split_io=True)


def test_split_io_overlaps_a_read_with_a_write():
    # write(0) waits until load(2), queued after it, has started: on one thread it would
    # wait in vain
    started = threading.Event()

    def load(i: int) -> int:
        if i == 2:
            started.set()
        return i

    def write(i: int, _: int) -> None:
        if i == 0:
            assert started.wait(5), "load and write never overlapped"

    run_pipeline(list(range(4)), load, lambda i, x: x, write, split_io=True)

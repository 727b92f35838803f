"""The resume journal: which output tensors are finished, inside the staging folder.

Each finished tensor gets a line with its name and a checksum of its bytes
(:func:`~mergekit_like.io.writer.word_sum`), written by
:class:`JournalWriter` only after those bytes are on the disk (``fdatasync`` of the shard
first), so after a crash (even ``kill -9`` or a power cut) a journaled tensor is complete
on disk. ``--resume`` checks each journaled tensor's checksum again and recomputes any that
do not match, so bytes that were lost anyway are never published. Every byte a run writes
is a pure function of the plan, so a resumed output is byte-identical to an uninterrupted
one. The first line fingerprints the plan and shard layout, and keeps the settings behind
it: a journal from another recipe, seed or shard size is refused (and kept), naming what
differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_like.errors import PartialKept, format_loc

JOURNAL = ".merge-journal"


def fingerprint(*parts: str | bytes) -> str:
    """A sha256 over the things that decide every output byte."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _head(path: Path, line: str) -> dict:
    """The journal's first line (its fingerprint); a damaged one is refused in one line."""
    try:
        head = json.loads(line) if line else {}
    except (ValueError, RecursionError):
        head = None
    if not isinstance(head, dict):
        raise PartialKept(f"{path}: the resume journal's first line is damaged; the partial "
                          "is kept: run with --force instead of --resume to start over")
    return head


@dataclass
class Journal:
    """An append-only list of finished tensors (a file handle owned by one run).

    ``sums`` maps each journaled tensor to the checksum of its bytes (lines without one,
    from older versions, are not trusted); ``done`` is its keys.
    """

    path: Path
    sums: Mapping[str, int]
    _fd: int

    @property
    def done(self) -> frozenset[str]:
        return frozenset(self.sums)

    @classmethod
    def open(cls, folder: Path, print_: str, resume: bool,
             settings: Mapping[str, Any] | None = None) -> Journal:
        """Start a fresh journal, or continue one whose fingerprint matches ``print_``.

        ``settings`` (what the fingerprint was made from, by name) go into the head, so a
        refused resume can say what differs. A refused resume raises :class:`PartialKept`.
        """
        path = folder / JOURNAL
        sums: dict[str, int] = {}
        if resume and path.is_file():
            lines = path.read_bytes().decode("utf-8", "replace").splitlines()
            head = _head(path, lines[0] if lines else "")
            if head.get("fingerprint") != print_:
                raise PartialKept(f"{folder}: not resumed: it was made with another "
                                  f"{_what_differs(head.get('settings'), settings or {})}; it "
                                  "is kept: rerun with the settings it was made with and "
                                  "--resume, or with --force to start over")
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                    name, checksum = entry["done"], entry.get("sum")
                except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                    break  # a line cut short by the crash: everything after it is redone
                if isinstance(name, str) and isinstance(checksum, int):
                    sums[name] = checksum
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            head_line = {"fingerprint": print_, "settings": dict(settings or {})}
            os.write(fd, (json.dumps(head_line) + "\n").encode())
        return cls(path, sums, fd)

    def record(self, name: str, checksum: int) -> None:
        """Mark ``name`` finished (call only once all of its bytes are on the disk)."""
        os.write(self._fd, (json.dumps({"done": name, "sum": checksum}) + "\n").encode())

    def close(self, remove: bool = False) -> None:
        os.close(self._fd)
        if remove:
            self.path.unlink(missing_ok=True)


def _what_differs(old: Any, new: Mapping[str, Any]) -> str:
    """'--seed (5, now 6)', 'the recipe at models[1].parameters.weight (0.5, now 0.4)'..."""
    if not isinstance(old, dict):
        return "recipe, seed or shard size (or an older version of mergekit_like)"
    for key, value in new.items():
        if old.get(key) == value:
            continue
        if key == "recipe":
            loc, a, b = _first_difference(old.get(key), value)
            at = f" at {format_loc(loc)}" if loc else ""
            return f"recipe{at} ({_short(a)}, now {_short(b)})" if loc else "recipe"
        return f"{key} ({_short(old.get(key))}, now {_short(value)})"
    return "version of mergekit_like or other ingredients (same recipe and settings)"


def _first_difference(a: Any, b: Any, loc: tuple[str | int, ...] = ()
                      ) -> tuple[tuple[str | int, ...], Any, Any]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if a.get(key, _MISSING) != b.get(key, _MISSING):
                return _first_difference(a.get(key, _MISSING), b.get(key, _MISSING),
                                         (*loc, key))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, (*loc, i))
    return loc, a, b


_MISSING = object()


def _short(value: Any) -> str:
    if value is _MISSING or value is None:
        return "unset"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class JournalWriter:
    """Appends journal lines on a thread of its own, each after its tensor's bytes are on
    the disk: queued tensors are flushed with one ``fdatasync`` per shard file, then
    journaled together, so the merge never waits for the disk and a crash loses at most
    the lines still queued (those tensors are computed again)."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._queue: queue.SimpleQueue[tuple[str, int, int] | None] = queue.SimpleQueue()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="merge-journal", daemon=True)
        self._thread.start()

    def add(self, name: str, checksum: int, fd: int) -> None:
        """Journal ``name`` (checksum ``checksum``) once the file ``fd`` is flushed."""
        if self._error is not None:
            raise self._error
        self._queue.put((name, checksum, fd))

    def close(self, check: bool = True) -> None:
        """Write every queued line (the files must still be open); with ``check``, raise
        the error that stopped the journal, if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if check and self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get())
            items = [b for b in batch if b is not None]
            if items and self._error is None:
                try:
                    for fd in dict.fromkeys(fd for _, _, fd in items):
                        os.fdatasync(fd)
                    for name, checksum, _ in items:
                        self._journal.record(name, checksum)
                except OSError as exc:
                    self._error = exc
            if len(items) < len(batch):
                return

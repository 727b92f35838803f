"""The resume journal: which output tensors are finished, inside the staging folder.

The executor appends a tensor's name once all its bytes are written, so after a crash (even
``kill -9``) every name in the journal is complete on disk and everything else is rewritten;
every byte a run writes is a pure function of the plan, so a resumed output is byte-identical
to an uninterrupted one. The first line fingerprints the plan and shard layout: a journal
from another recipe, seed or shard size is refused rather than silently mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mergekit_like.errors import MergeError

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
        raise MergeError(f"{path}: the resume journal's first line is damaged; run with "
                         "--force instead of --resume to start over")
    return head


@dataclass
class Journal:
    """An append-only list of finished tensors (a file handle owned by one run)."""

    path: Path
    done: frozenset[str]
    _fd: int

    @classmethod
    def open(cls, folder: Path, print_: str, resume: bool) -> Journal:
        """Start a fresh journal, or continue one whose fingerprint matches ``print_``."""
        path = folder / JOURNAL
        done: set[str] = set()
        if resume and path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            head = _head(path, lines[0] if lines else "")
            if head.get("fingerprint") != print_:
                raise MergeError(f"{folder}: this partial output was made with another recipe, "
                                 "seed or shard size; run with --force instead of --resume "
                                 "to start over")
            for line in lines[1:]:
                try:
                    done.add(json.loads(line)["done"])
                except (ValueError, KeyError, TypeError, RecursionError):
                    break  # a line cut short by the crash: everything after it is redone
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, (json.dumps({"fingerprint": print_}) + "\n").encode())
        return cls(path, frozenset(done), fd)

    def record(self, name: str) -> None:
        """Mark ``name`` finished (call only after all of its bytes are written)."""
        os.write(self._fd, (json.dumps({"done": name}) + "\n").encode())

    def close(self, remove: bool = False) -> None:
        os.close(self._fd)
        if remove:
            self.path.unlink(missing_ok=True)

"""The staging folder: where a run writes, who owns it, what is kept when the run fails.

A run writes into ``.OUT.partial`` beside OUT and renames it into place at the end. While it
runs it holds an exclusive lock (``flock``) on that folder, so a second run on the same OUT
fails at once, naming the live one, and neither ``--force`` nor ``--resume`` touches a folder
another run is writing. When a run fails, its folder is removed, except when it holds a
resume journal and the failure leaves its tensors good (an interruption, an I/O error, a
failure after the tensors were written, a refused resume): then it is kept, and the message
says how to continue.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mergekit_like.errors import Interrupted, MergeError, PartialKept

#: the pid of the run holding the staging folder's lock
OWNER = ".merge-owner"


def partial_dir(out: Path) -> Path:
    """The staging folder of ``out``: a hidden sibling, kept after a crash for --resume."""
    return out.parent / f".{out.name}.partial"


class StagingLock:
    """An exclusive ``flock`` on a staging folder, held by one run from start to publish."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def take(cls, out: Path, tmp: Path) -> StagingLock:
        """Create ``tmp`` if needed and lock it; fail at once if another run holds it."""
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise MergeError(f"{tmp}: cannot use it as the staging folder of {out}: "
                             f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                who = f"process {int((tmp / OWNER).read_text())}"
            except (OSError, ValueError):
                who = "another process"
            raise MergeError(f"{out}: another merge ({who}) is writing it into {tmp}; wait "
                             "for it to finish or stop it") from None
        (tmp / OWNER).write_text(f"{os.getpid()}\n")
        return cls(fd)

    def release(self) -> None:
        os.close(self._fd)


def _prepare(tmp: Path, force: bool, resume: bool) -> None:
    """Refuse, or clear with ``force``, what an earlier run left in ``tmp`` (unless resuming)."""
    left = [p for p in tmp.iterdir() if p.name != OWNER]
    if not left or resume:
        return
    if not force:
        raise MergeError(f"{tmp}: holds the partial output of an interrupted run; rerun with "
                         "--resume to continue it, or --force to start over")
    for p in left:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


@contextmanager
def staged_output(out: Path, force: bool, resume: bool = False) -> Iterator[Path]:
    """Yield the locked staging folder beside ``out``; move it to ``out`` if the body succeeds.

    A failure removes the staging folder and leaves ``out`` untouched, except when tensors
    were being written (the folder holds a resume journal) and the run was interrupted, hit
    an I/O error (a full disk) or raised :class:`PartialKept`: then the folder is kept and
    the error says how to resume.
    """
    from mergekit_like.execute.journal import JOURNAL

    if out.exists() and not force:
        raise MergeError(f"{out}: already exists; pass --force to replace it")
    tmp = partial_dir(out)
    lock = StagingLock.take(out, tmp)
    try:
        _prepare(tmp, force, resume)
        try:
            yield tmp
        except PartialKept:
            raise
        except KeyboardInterrupt:
            if (tmp / JOURNAL).is_file():
                raise Interrupted(f"interrupted; the partial output is kept in {tmp}: rerun "
                                  "the same command with --resume to continue") from None
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Interrupted:
            if not (tmp / JOURNAL).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        except OSError as exc:
            if (tmp / JOURNAL).is_file():
                raise PartialKept(f"writing {out} failed: {exc.strerror or exc}; the partial "
                                  f"output is kept in {tmp}: fix the cause (e.g. free disk "
                                  "space) and rerun with --resume") from None
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _publish(out, tmp, force)
    finally:
        lock.release()


def _publish(out: Path, tmp: Path, force: bool) -> None:
    """Rename the finished staging folder to ``out`` (replacing it only with ``force``)."""
    if (out.exists() or out.is_symlink()) and not force:  # made meanwhile by another run
        shutil.rmtree(tmp, ignore_errors=True)
        raise MergeError(f"{out}: already exists; pass --force to replace it")
    (tmp / OWNER).unlink(missing_ok=True)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists() or out.is_symlink():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists() or old.is_symlink():
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def kept_after_tensors(exc: BaseException, out: Path, tmp: Path) -> PartialKept:
    """The error of a step that failed after every tensor was written into ``tmp`` (its
    journal still there): the partial is kept, so ``--resume`` only redoes the last steps."""
    if isinstance(exc, MergeError):
        why = "; ".join(str(p) for p in exc.problems) or "failed"
    elif isinstance(exc, OSError):
        why = f"writing {out} failed: {exc.strerror or exc}"
    else:
        why = f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]
    return PartialKept(f"{why}; the merged tensors are kept in {tmp}: fix the cause and rerun "
                       "the same command with --resume")

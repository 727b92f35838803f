"""Checks on the output folder named on the command line, before any work starts.

A run stages OUT in a hidden sibling (``.OUT.partial``) and renames it at the end, so OUT
must be a place where a folder can be made: under a folder (not a file) that can be
written, with a name short enough to leave room for the sibling's longer name, and not a
symbolic link (``--force`` replaces OUT; it never follows a link to replace its target).

>>> check_out_path(Path("out"))
"""

from __future__ import annotations

import os
from pathlib import Path

from mergekit_like.errors import MergeError

#: bytes the staging siblings add to OUT's name (``.OUT.partial``, ``.OUT.old-PID``, ...)
SIBLING_EXTRA = 24


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if os.path.lexists(parent):
            return parent
    return Path(path.anchor or ".")


def check_out_path(out: Path) -> None:
    """Refuse an OUT that no run could publish, in one line naming it."""
    if out.is_symlink():
        raise MergeError(
            f"{out}: OUT is a symbolic link (to {os.readlink(out)}); give the "
            "folder it points to, or remove the link"
        )
    where = _existing_ancestor(out.absolute())
    name_max = _limit(where, "PC_NAME_MAX", 255)
    n = len(os.fsencode(out.name))
    if n + SIBLING_EXTRA > name_max:
        raise MergeError(
            f"{out.name[:40]}...: OUT's name is {n} bytes long; at most "
            f"{name_max - SIBLING_EXTRA} (the run stages it beside OUT under a "
            f"longer name, and names are at most {name_max} bytes here)"
        )
    path_max = _limit(where, "PC_PATH_MAX", 4096)
    if len(os.fsencode(str(out.absolute()))) + SIBLING_EXTRA > path_max:
        raise MergeError(
            f"{str(out)[:40]}...: OUT's path is longer than the {path_max} bytes this system allows"
        )
    if not where.is_dir():
        raise MergeError(f"{out}: cannot make OUT there: {where} is a file, not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        raise MergeError(
            f"{out}: cannot make OUT there: {where} cannot be written (permission denied)"
        )

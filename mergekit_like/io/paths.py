"""Paths written by users, looked at without tracebacks: ``~user``, over-long names, NUL.

``Path.is_dir`` raises on a name longer than the system allows and ``Path.expanduser`` on an
unknown user; these helpers answer "no such folder" or raise an :class:`InputError` that
names what the user wrote.

>>> is_dir(Path("a" * 5000))
False
"""

from __future__ import annotations

from pathlib import Path

from mergekit_like.errors import InputError


def shown(ref: str, limit: int = 80, bare: bool = False) -> str:
    """``ref`` quoted (``bare``: as it is) for a one-line message, cut short when long.

    >>> shown("x" * 100, limit=10)
    "'xxxxxxxxxx'... (100 characters)"
    """
    if len(ref) <= limit:
        return ref if bare else repr(ref)
    return f"{ref[:limit]!r}... ({len(ref)} characters)"


def expand_user(ref: str, what: str) -> Path:
    """``Path(ref)`` with a leading ``~`` or ``~user`` expanded; ``what`` names the field."""
    try:
        return Path(ref).expanduser()
    except RuntimeError:  # ~user of no such user, or no home at all
        user = ref.split("/", 1)[0]
        raise InputError(f"{what}: {shown(ref)}: {user} names no user's home folder") from None


def is_dir(path: Path) -> bool:
    """Whether ``path`` is a folder; False for names the system cannot even look up."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def is_file(path: Path) -> bool:
    """Whether ``path`` is a regular file; False for names the system cannot look up."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False

"""Errors that speak the recipe's vocabulary.

Every problem a user can cause is raised as a :class:`MergeError` holding one or more
:class:`Problem` values. The CLI prints one line per problem and exits with code 2; no
traceback reaches the user. ``Problem.loc`` is the path of the recipe field involved,
formatted the way the user wrote it (``models[1].parameters.weight``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Loc = tuple[str | int, ...]
_PLAIN = re.compile(r"[^\s.\[\]'\"]+")


def format_loc(loc: Sequence[str | int]) -> str:
    """Format a field path as the user would write it.

    >>> format_loc(("models", 1, "parameters", "weight"))
    'models[1].parameters.weight'
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _PLAIN.fullmatch(str(part)):
            out += f"[{str(part)!r}]"  # odd keys stay on one line and unambiguous
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located as precisely as we know."""

    message: str
    loc: Loc = ()
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        field = f"{format_loc(self.loc)}: " if self.loc else ""
        text = f"{where}{field}{self.message}"
        return text.replace("\r", "\\r").replace("\n", "\\n")  # always one line


class MergeError(Exception):
    """A user-facing error: bad recipe, bad input model, bad option. Exit code 2."""

    exit_code = 2

    def __init__(self, problems: Problem | str | Iterable[Problem]):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class Interrupted(MergeError):
    """The user stopped the run (Ctrl-C); the message says how to resume. Exit code 130."""

    exit_code = 130


class PartialKept(MergeError):
    """The run failed, or a resume was refused, and its partial output is kept for
    ``--resume``; the message says where and how to continue. Exit code 2."""


class RecipeError(MergeError):
    """The recipe file (or an override) is malformed or inconsistent."""


class PlanError(MergeError):
    """The recipe is well formed but cannot be planned against the ingredient models."""


class InputError(MergeError):
    """An ingredient file is missing, corrupt or unreadable."""

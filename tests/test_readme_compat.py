"""The README's mergekit compatibility tables stay true: the methods table lists exactly
the registry's methods, and the mergekit-yaml options table exactly mergekit-yaml's options."""

from __future__ import annotations

import re
from pathlib import Path

from mergekit_like.mergekit_yaml import _parser
from mergekit_like.methods import REGISTRY

README = Path(__file__).resolve().parent.parent / "README.md"


def _table(header: str) -> list[list[str]]:
    """The rows (cells) of the compatibility section's table whose header row is ``header``."""
    section = README.read_text().split("## mergekit compatibility")[1].split("\n## ")[0]
    lines = section.split(header + "\n")[1].splitlines()[1:]  # skip the |---| row
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_methods_table_matches_the_registry():
    rows = _table("| method | supported | notes |")
    names = [re.fullmatch(r"`(\w+)`", r[0]).group(1) for r in rows]
    assert len(names) == len(set(names))
    assert {n for n, r in zip(names, rows, strict=True) if r[1] == "yes"} == set(REGISTRY)
    assert all(r[1] in ("yes", "not yet") for r in rows)


def test_options_table_matches_mergekit_yaml():
    rows = _table("| option | supported | notes |")
    listed = {opt for r in rows for opt in re.findall(r"`(-[-\w]+)`", r[0])}
    parser = _parser()
    known = {o for a in parser._actions for o in a.option_strings}
    assert listed <= known  # every option the table names is accepted
    ours = {"-h", "--help", "--force"}
    missing = {o for o in known - ours - listed if not o.startswith("--no-")}
    assert not missing, f"options missing from the README table: {sorted(missing)}"

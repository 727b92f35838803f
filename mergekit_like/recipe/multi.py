"""Multi-document recipes (mergekit-multi's convention): several named merges in one file.

A later document may name an earlier one as a model (``model: my-first-merge``). Documents
run in dependency order; every document but the final one is written to an intermediate
folder, and one whose output already exists there is skipped, so a rerun resumes. The final
one is the document without a ``name`` (mergekit-multi's convention; at most one may lack
it, and then every named document is an intermediate), or else the one named document that
no other uses.

    merge pipeline.yaml OUT     # intermediates in OUT-intermediates/<name>, final in OUT
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType

from mergekit_like.errors import RecipeError
from mergekit_like.recipe.loading import LoadedRecipe, folder_name_problem


def _refs(doc: LoadedRecipe) -> set[str]:
    return {part for ref in doc.recipe.referenced_models() for part in ref.split("+")}


def order_documents(docs: Sequence[LoadedRecipe]) -> list[LoadedRecipe]:
    """Documents in dependency order; the final one (used by no other) last."""
    by_name = {d.recipe.name: d for d in docs}
    if len(by_name) != len(docs):
        names = [d.recipe.name for d in docs]
        dup = next(n for n in names if names.count(n) > 1)
        what = "two documents lack a name" if dup is None else f"two documents are named {dup!r}"
        raise RecipeError(docs[0].problem(("name",), what))
    named = {n for n in by_name if n is not None}
    deps = {d.recipe.name: sorted(_refs(d) & named - {d.recipe.name}) for d in docs}
    order: list[str | None] = []
    state: dict[str | None, str] = {}

    def visit(name: str | None, chain: tuple[str | None, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = " -> ".join(n or "(unnamed)" for n in chain)
            raise RecipeError(by_name[name].problem(
                ("name",), f"documents depend on each other in a cycle: {cycle}"))
        state[name] = "active"
        for dep in deps[name]:
            visit(dep, (*chain, dep))
        state[name] = "done"
        order.append(name)

    for name in by_name:
        visit(name, (name,))
    if None in by_name:  # the unnamed document is the output, whatever else is unused
        order.remove(None)
        return [by_name[n] for n in (*order, None)]
    used = {n for ds in deps.values() for n in ds}
    finals = [n for n in by_name if n not in used]
    if len(finals) != 1:
        raise RecipeError(docs[0].problem(("name",), "a multi-document recipe must end in one "
                                          f"final merge; these are used by no other: {finals}"))
    order.remove(finals[0])
    return [by_name[n] for n in (*order, finals[0])]


def intermediate_dir(out: Path) -> Path:
    """Where the non-final documents of a multi-document recipe are written."""
    return out.parent / f"{out.name}-intermediates"


def run_documents(
    docs: Sequence[LoadedRecipe],
    out: Path,
    write: Callable[[LoadedRecipe, Path], None],
    say: Callable[[str], None] = print,
) -> list[Path]:
    """Run every document in order with ``write(doc, folder)``; returns the output folders."""
    ordered = order_documents(docs)
    inter = intermediate_dir(out)
    named: dict[str, Path] = {}
    written = []
    for i, doc in enumerate(ordered):
        name = doc.recipe.name
        if name is not None and (why := folder_name_problem(name)) is not None:
            raise RecipeError(doc.problem(("name",), why))  # load_recipe_documents checks it
        final = i == len(ordered) - 1
        name = doc.recipe.name or "final merge"
        folder = out if final else inter / name
        if not final and (folder / "config.json").is_file():
            say(f"{name}: {folder} exists, skipping")
        else:
            doc = dataclasses.replace(doc, named_models=MappingProxyType(dict(named)))
            write(doc, folder)
        named[name] = folder
        written.append(folder)
    return written

"""Load a recipe file: YAML with line numbers, command-line overrides, validation.

``load_recipe`` is the single entry point: it returns a :class:`LoadedRecipe`, a frozen
value holding the validated :class:`Recipe` and where each field came from, so later
stages can report errors as ``recipe.yaml:7: models[1].parameters.weight: ...``.

Example::

    loaded = load_recipe(Path("recipes/linear.yaml"), ["parameters.normalize=false"])
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from mergekit_like.errors import Loc, Problem, RecipeError, format_loc
from mergekit_like.recipe.models import Recipe
from mergekit_like.recipe.yaml_lines import (
    MAX_DEPTH,
    parse_yaml_documents,
    plain_value_problem,
    read_recipe_text,
)

OVERRIDE_FILE = "command line"


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe plus the file and line each field came from."""

    recipe: Recipe
    path: Path
    raw: Any
    lines: MappingProxyType[Loc, int] = field(default_factory=lambda: MappingProxyType({}))
    overridden: frozenset[Loc] = frozenset()
    #: outputs of earlier documents of a multi-document file, by their ``name``
    named_models: MappingProxyType[str, Path] = field(
        default_factory=lambda: MappingProxyType({}))
    #: ``--trust-remote-code``: ingredients' own Python code (``auto_map``) may run
    trust_remote_code: bool = False

    def problem(self, loc: Loc, message: str) -> Problem:
        """A :class:`Problem` at ``loc``, with the file and line of its nearest known part."""
        return locate(loc, message, self.path, self.lines, self.overridden)


def locate(
    loc: Loc,
    message: str,
    path: Path,
    lines: MappingProxyType[Loc, int] | dict[Loc, int],
    overridden: frozenset[Loc] = frozenset(),
) -> Problem:
    for n in range(len(loc), -1, -1):
        if loc[:n] in overridden:
            return Problem(message, loc, OVERRIDE_FILE, None)
        if n and loc[:n] in lines:
            return Problem(message, loc, path.name, lines[loc[:n]])
    return Problem(message, loc, path.name, None)


def parse_yaml(text: str, path: Path) -> tuple[Any, dict[Loc, int]]:
    """Parse one YAML document, returning the data and a map from field path to line."""
    docs = parse_yaml_documents(text, path)
    if len(docs) > 1:
        raise RecipeError(Problem("several YAML documents: run them with `merge` (each needs a "
                                  "name)", (), path.name, docs[1][2]))
    return (docs[0][0], docs[0][1]) if docs else (None, {})


def apply_overrides(data: Any, overrides: Sequence[str]) -> tuple[Any, frozenset[Loc]]:
    """Apply hydra-grammar overrides (``a.b=1``, ``+a.c=x``, ``++a.d=y``, ``~a.e``).

    List items are addressed by index (``models.0.parameters.weight=0.3``). Returns the
    new data (the input is not modified) and the paths that were set.
    """
    if not overrides:
        return data, frozenset()
    import copy

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    for text in overrides:
        if _bracket_depth(text) > MAX_DEPTH:
            raise RecipeError(Problem(f"bad override {text[:40]!r}...: nested deeper than "
                                      f"{MAX_DEPTH} levels", (), OVERRIDE_FILE))
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except (HydraException, ValueError, RecursionError) as exc:  # ValueError: 5000 digits
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise RecipeError(Problem(f"bad override: {msg}", (), OVERRIDE_FILE)) from None
    data = copy.deepcopy(data) if data is not None else {}
    touched: set[Loc] = set()
    for ov, text in zip(parsed, overrides, strict=True):
        if ov.is_sweep_override():
            raise RecipeError(Problem(
                f"{text!r} is a sweep; sweeps need multirun (-m)", (), OVERRIDE_FILE))
        if not ov.key_or_group or "" in ov.key_or_group.split("."):
            raise RecipeError(Problem(f"bad override {text!r}: expected key=value",
                                      (), OVERRIDE_FILE))
        loc: Loc = tuple(int(p) if p.isdigit() else p for p in ov.key_or_group.split("."))
        parent = data
        for i, part in enumerate(loc[:-1]):
            parent = _child(parent, part, loc[: i + 1], create=ov.type != OverrideType.DEL)
        last = loc[-1]
        if not isinstance(parent, dict | list):
            raise RecipeError(Problem("not a mapping or list", loc[:-1], OVERRIDE_FILE))
        exists = _has(parent, last)
        if ov.type == OverrideType.DEL:
            if not exists:
                raise RecipeError(Problem(f"~{format_loc(loc)}: no such key to delete",
                                          loc, OVERRIDE_FILE))
            del parent[last]
            continue
        if ov.type == OverrideType.ADD and exists:
            raise RecipeError(Problem(
                f"+{format_loc(loc)}: already set; use {format_loc(loc)}=... or ++",
                loc, OVERRIDE_FILE))
        value = ov.value()
        if isinstance(parent, list):
            if not exists:
                raise RecipeError(Problem("index out of range", loc, OVERRIDE_FILE))
            parent[last] = value
        else:
            parent[last] = value
        touched.add(loc)
    return data, frozenset(touched)


def _bracket_depth(text: str) -> int:
    """How deeply ``[...]`` and ``{...}`` nest in an override's text."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _has(parent: Any, key: str | int) -> bool:
    if isinstance(parent, list):
        return isinstance(key, int) and 0 <= key < len(parent)
    return key in parent


def _child(parent: Any, key: str | int, loc: Loc, create: bool) -> Any:
    if isinstance(parent, list):
        if not isinstance(key, int) or not 0 <= key < len(parent):
            raise RecipeError(Problem("no such list item", loc, OVERRIDE_FILE))
        return parent[key]
    if not isinstance(parent, dict):
        raise RecipeError(Problem("not a mapping or list", loc, OVERRIDE_FILE))
    if key not in parent or parent[key] is None:
        if not create:
            raise RecipeError(Problem("no such key", loc, OVERRIDE_FILE))
        parent[key] = {}
    return parent[key]


def validate_data(data: Any, path: Path, lines: dict[Loc, int],
                  overridden: frozenset[Loc] = frozenset()) -> Recipe:
    """Validate parsed recipe data, turning pydantic errors into located problems."""
    if not isinstance(data, dict):
        raise RecipeError(Problem("a recipe is a YAML mapping (merge_method: ..., models: ...)",
                                  (), path.name, 1))
    _refuse_other_formats(data, path, lines)
    check_plain(data, path, lines, overridden)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key" + _suggest(str(loc[-1]) if loc else "")
            elif err["type"] == "missing":
                msg = "required field is missing"
            problems.append(locate(loc, msg, path, lines, overridden))
        raise RecipeError(problems) from None


OTHER_FORMATS = (
    (("experts", "gate_mode"), "a mergekit-moe config",
     "build it with `merge moe CONFIG OUT` (or `merge CONFIG OUT`)"),
    (("genome", "tasks"), "a mergekit-evolve config",
     "run it with `merge evolve CONFIG OUT`"),
)
"""mergekit's other config formats: the top-level keys that mark them, and what they do."""


def _refuse_other_formats(data: dict[Any, Any], path: Path, lines: dict[Loc, int]) -> None:
    """One line naming the format for a mergekit-moe or mergekit-evolve config."""
    for keys, what, does in OTHER_FORMATS:
        found = [k for k in data if k in keys]
        if found:
            named = ", ".join(f"'{k}'" for k in sorted(found))
            raise RecipeError(locate((found[0],), f"this is {what} (it has {named}); {does}",
                                     path, lines))


def check_plain(data: Any, path: Path, lines: dict[Loc, int],
                overridden: frozenset[Loc] = frozenset()) -> None:
    """Refuse values no field takes, wherever they came from (the file or an override):
    text that is not Unicode, integers out of range, nesting past ``MAX_DEPTH``."""
    stack: list[tuple[Loc, Any]] = [((), data)]
    while stack:
        loc, value = stack.pop()
        if len(loc) > MAX_DEPTH:
            raise RecipeError(locate(loc[:MAX_DEPTH], f"nested deeper than {MAX_DEPTH} levels",
                                     path, lines, overridden))
        items = value.items() if isinstance(value, dict) else \
            enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            problem = plain_value_problem(key) or plain_value_problem(item)
            if problem:
                raise RecipeError(locate((*loc, key) if isinstance(key, str | int) and
                                         not plain_value_problem(key) else loc,
                                         problem, path, lines, overridden))
            stack.append(((*loc, key), item))


def _field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Every field name (by alias) of ``model`` and the models nested in it."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names: set[str] = set()
    stack = []
    for name, info in model.model_fields.items():
        names.add(info.alias or name)
        stack.append(info.annotation)
    while stack:
        ann = stack.pop()
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names |= _field_names(ann, seen)
        stack.extend(get_args(ann))
    return names


def _suggest(key: str) -> str:
    """'; did you mean 'tokenizer_source'?' for a near miss of a known key, else ''."""
    match = difflib.get_close_matches(key, sorted(_field_names(Recipe)), n=1, cutoff=0.75)
    return f"; did you mean {match[0]!r}?" if match else ""


def _is_union_tag(part: str | int) -> bool:
    return isinstance(part, str) and (part.startswith(("list[", "tuple[", "function-")) or
                                      part in {"float", "bool", "str", "int"})


def load_recipe(path: Path, overrides: Sequence[str] = ()) -> LoadedRecipe:
    """Read, override and validate a recipe file."""
    text = read_recipe_text(path)
    data, lines = parse_yaml(text, path)
    data, touched = apply_overrides(data, overrides)
    recipe = validate_data(data, path, lines, touched)
    return LoadedRecipe(recipe, path, data, MappingProxyType(lines), touched)


def folder_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be used as one folder name (None when it can): no separators,
    no ``..`` or leading dot, no NUL, at most 255 bytes.

    >>> folder_name_problem("../x")
    "'../x' holds a path separator"
    """
    if "/" in name or "\\" in name:
        return f"{name!r} holds a path separator"
    if name.startswith("."):
        return f"{name!r} starts with a dot"
    if "\0" in name or len(name.encode("utf-8", "surrogatepass")) > 255:
        return f"{name!r} is not a valid folder name (NUL or over 255 bytes)"
    return None


def load_recipe_documents(path: Path, overrides: Sequence[str] = ()) -> list[LoadedRecipe]:
    """Every document of a recipe file, validated (one document: same as :func:`load_recipe`).

    Several documents follow mergekit-multi's convention: each has a ``name`` (but one, the
    output, may have none), and one may use another's name as a model. Overrides apply to
    single documents only.
    """
    text = read_recipe_text(path)
    docs = parse_yaml_documents(text, path)
    if len(docs) <= 1:
        return [load_recipe(path, overrides)]
    if overrides:
        raise RecipeError(Problem("overrides apply to single-document recipes; this file has "
                                  f"{len(docs)} documents", (), OVERRIDE_FILE))
    out, problems = [], []
    for data, lines, first in docs:
        try:
            recipe = validate_data(data, path, lines)
        except RecipeError as exc:
            problems.extend(exc.problems)
            continue
        if not recipe.name and any(not d.recipe.name for d in out):
            problems.append(Problem("only one document of a multi-document recipe may lack a "
                                    "'name' (that one is the output)", (), path.name, first))
        if recipe.name is not None and (why := folder_name_problem(recipe.name)) is not None:
            problems.append(locate(("name",), f"{why}: a document's name becomes the folder "
                                   "OUT-intermediates/<name>, so it must be a plain folder "
                                   "name", path, lines))
        out.append(LoadedRecipe(recipe, path, data, MappingProxyType(lines)))
    if problems:
        raise RecipeError(problems)
    return out

"""Reading a recipe file safely: a small regular file of plain YAML, with each field's line.

A recipe holds plain values only (mappings, lists, strings, numbers, booleans, null), so
this module refuses what YAML could smuggle in: tags naming Python objects or unknown types,
values a tag cannot be (``!!int abc``), recursive aliases, nesting deeper than
:data:`MAX_DEPTH`, alias expansions past :data:`MAX_VALUES` values (an "alias bomb"), text
that is not valid Unicode (lone surrogates, NUL) and integers too large for any field.
YAML merge keys (``<<: *defaults``) work as YAML defines them. Each problem is a
:class:`~mergekit_like.errors.RecipeError` naming the file, line and field.

Example::

    docs = parse_yaml_documents(read_recipe_text(Path("r.yaml")), Path("r.yaml"))
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from mergekit_like.errors import Loc, Problem, RecipeError

#: the largest recipe file read (a recipe is a few KiB; this bounds reading /dev/zero)
MAX_RECIPE_BYTES = 4 * 2**20
#: the deepest nesting of mappings and lists, aliases included
MAX_DEPTH = 64
#: the most values a recipe may expand to once its aliases are followed
MAX_VALUES = 100_000
#: the largest integer any recipe field takes
MAX_INT = 2**63 - 1

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null", "timestamp", "binary")}
_MERGE = _CORE + "merge"


def read_recipe_text(path: Path) -> str:
    """The text of a recipe file; refuses a FIFO, device or folder, and files over 4 MiB."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    except FileNotFoundError:
        raise RecipeError(Problem("recipe file not found", (), str(path))) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise RecipeError(Problem(f"cannot read recipe: {reason}", (), str(path))) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RecipeError(
                Problem(
                    "not a regular file (a folder, FIFO or device); give a recipe file",
                    (),
                    str(path),
                )
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise RecipeError(
            Problem(f"cannot read recipe: {exc.strerror or exc}", (), str(path))
        ) from None
    finally:
        os.close(fd)
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(
            Problem(
                f"larger than {MAX_RECIPE_BYTES // 2**20} MiB; a recipe is a small YAML file",
                (),
                str(path),
            )
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(Problem(f"not UTF-8 text (byte {exc.start})", (), str(path))) from None


def plain_value_problem(value: Any) -> str | None:
    """Why a scalar cannot be in a recipe (None: it can): bad text or an oversized integer."""
    if isinstance(value, str):
        if "\x00" in value:
            return "text holds a NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"text holds a lone surrogate {value[exc.start]!r}, which is not Unicode"
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        return f"integer out of range (at most {MAX_INT})"
    return None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, composing nodes no deeper than MAX_DEPTH."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def compose_documents(text: str, path: Path) -> list[yaml.Node]:
    """The node tree of every document of ``text`` (syntax errors name the line)."""
    loader = None
    try:
        loader = _Loader(text)  # checks the text's characters
        nodes = []
        while loader.check_node():
            nodes.append(loader.get_node())
        return nodes
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(Problem(f"invalid YAML: {reason}", (), path.name, line)) from None
    finally:
        if loader is not None:
            loader.dispose()


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag


class NodeBuilder:
    """Builds plain Python values from one document's nodes, recording each field's line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[Loc, int] = {}
        self._count = 0
        self._open: set[int] = set()  # ids of the collections being built (alias cycles)
        self._constructor = yaml.constructor.SafeConstructor()

    def _fail(self, message: str, loc: Loc, node: yaml.Node) -> RecipeError:
        return RecipeError(Problem(message, loc, self.path.name, node.start_mark.line + 1))

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        """The value of ``node``, found at field path ``loc``."""
        self._count += 1
        if self._count > MAX_VALUES:
            raise self._fail(
                f"expands to more than {MAX_VALUES} values (YAML aliases repeated inside aliases?)",
                loc,
                node,
            )
        if len(loc) > MAX_DEPTH:
            raise self._fail(
                f"nested deeper than {MAX_DEPTH} levels (through YAML aliases)", loc, node
            )
        self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, loc)
        if id(node) in self._open:
            raise self._fail("recursive YAML alias: this value contains itself", loc, node)
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
            self._check_tag(node, _CORE + "seq", loc)
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        finally:
            self._open.discard(id(node))

    def _check_tag(self, node: yaml.Node, allowed: str, loc: Loc) -> None:
        if node.tag != allowed:
            raise self._fail(
                f"YAML tag {_short_tag(node.tag)!r} is not allowed (a recipe holds plain values)",
                loc,
                node,
            )

    def scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        """A plain value: str, int, float, bool, None (a timestamp or bytes as YAML makes)."""
        if node.tag not in _SCALAR_TAGS:
            self._check_tag(node, "", loc)
        try:
            value = self._constructor.construct_object(node, deep=True)
        except (
            yaml.YAMLError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            OverflowError,
        ) as exc:
            kind = _short_tag(node.tag).removeprefix("!!")
            shown = (
                node.value
                if len(node.value) <= 40
                else f"{node.value[:40]}... ({len(node.value)} characters)"
            )
            why = "; too many digits" if "digits" in str(exc) else ""
            raise self._fail(f"not a valid {kind}: {shown!r}{why}", loc, node) from None
        problem = plain_value_problem(value)
        if problem:
            raise self._fail(problem, loc, node)
        return value

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        self._check_tag(node, _CORE + "map", loc)
        out: dict[Any, Any] = {}
        merged: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.append(value_node)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise self._fail("a key must be a plain value", loc, key_node)
            key = self.scalar(key_node, loc)
            if key in out:
                raise self._fail(f"duplicate key {key!r}", loc, key_node)
            out[key] = self.build(value_node, (*loc, key))
        for key, value in self._merged(merged, loc).items():
            out.setdefault(key, value)  # explicit keys win over merged ones
        self.lines[loc] = node.start_mark.line + 1
        return out

    def _merged(self, values: list[yaml.Node], loc: Loc) -> dict[Any, Any]:
        """The keys that ``<<:`` merges in: a mapping, or a list of them (first wins)."""
        out: dict[Any, Any] = {}
        lines = dict(self.lines)
        for value_node in values:
            sources = (
                value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            )
            for src in sources:
                if not isinstance(src, yaml.MappingNode):
                    raise self._fail(
                        "a merge key '<<' takes a mapping or a list of mappings", loc, src
                    )
                for key, value in self.build(src, loc).items():
                    out.setdefault(key, value)
        # explicit keys (built before) keep their own lines
        self.lines.update({k: v for k, v in lines.items() if k[: len(loc)] == loc})
        return out


def parse_yaml_documents(text: str, path: Path) -> list[tuple[Any, dict[Loc, int], int]]:
    """Parse every YAML document: (data, field path -> line, first line) for each."""
    out = []
    for node in compose_documents(text, path):
        builder = NodeBuilder(path)
        out.append((builder.build(node, ()), builder.lines, node.start_mark.line + 1))
    return out

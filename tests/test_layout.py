"""The package's layout shows the flow: imports point down the stages, never up or around.

Every import of every module is read from the source (function-level and TYPE_CHECKING
imports included) and checked against the layer order below; a module may import its own
layer and the layers under it. A circle is also a failure, within a layer too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mergekit_like

ROOT = Path(mergekit_like.__file__).parent
PKG = "mergekit_like"

#: top to bottom; a module may import only from its own layer or those after it
#: (a command-line program inside a room, like ``python -m mergekit_like.soups.demo``, sits
#: at the top with the other programs)
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__", "cli", "mergekit_yaml", "demo", "soups.demo"),
    ("evolve",),
    ("run",),
    ("soups", "datamerge", "analyze", "moe"),
    ("execute",),
    ("plan",),
    ("recipe",),
    ("io", "methods", "native", "errors", "__init__"),
)


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name)."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join((PKG, *parts)).removesuffix(".__init__")
        out[name] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports, resolved to the longest known module."""
    base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                parts = base.split(".")
                mod = ".".join(parts[: len(parts) - node.level + 1] + ([mod] if mod else []))
            targets = [mod, *(f"{mod}.{a.name}" for a in node.names)]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def layer(name: str) -> int:
    """The index in LAYERS of a module: its own entry, else its top-level part's."""
    inner = name.removeprefix(PKG + ".") if "." in name else "__init__"
    for key in (inner, inner.split(".")[0]):
        for i, group in enumerate(LAYERS):
            if key in group:
                return i
    raise AssertionError(f"{name}: not in any layer of tests/test_layout.py; place it")


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}


def test_every_stage_has_its_package():
    for stage in ("recipe", "plan", "execute", "io", "methods", "soups"):
        assert (ROOT / stage / "__init__.py").is_file(), stage


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import of ``graph`` that points to a higher layer."""
    return sorted(f"{a} imports {b}" for a, targets in graph.items() for b in targets
                  if layer(b) < layer(a))


def test_no_import_points_up():
    assert upward(GRAPH) == []


def test_the_checker_sees_an_upward_import():
    graph = {"mergekit_like.plan.build": {"mergekit_like.soups", "mergekit_like.recipe.models"},
             "mergekit_like.io.reader": {"mergekit_like.execute.steps"},
             "mergekit_like.soups.demo": {"mergekit_like.cli"}}
    assert upward(graph) == ["mergekit_like.io.reader imports mergekit_like.execute.steps",
                             "mergekit_like.plan.build imports mergekit_like.soups"]


def test_no_import_circles():
    # Tarjan's strongly connected components over the module graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert circles == []


def test_the_recipe_layer_imports_no_torch():
    heavy = sorted(f"{name} imports {mod}" for name, path in modules().items()
                   if name.startswith(f"{PKG}.recipe")
                   for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Import | ast.ImportFrom)
                   for mod in ([a.name for a in node.names] if isinstance(node, ast.Import)
                               else [node.module or ""])
                   if mod.split(".")[0] in ("torch", "transformers", "safetensors"))
    assert heavy == []


def test_loading_a_recipe_loads_neither_torch_nor_the_soups():
    import subprocess
    import sys

    code = ("import sys; import mergekit_like.recipe.loading, mergekit_like.recipe.checks, "
            "mergekit_like.recipe.schema, mergekit_like.recipe.multi; "
            "print(sorted(m for m in ('torch', 'mergekit_like.soups', 'mergekit_like.plan') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

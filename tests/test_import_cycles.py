"""No import cycles inside or between the five packages.

A cycle is module A importing B (at any level: top, inside a function, under ``if``) while B,
directly or through others, imports A. Function-level imports count because they are how a
cycle hides: the code works until someone moves the import to the top. The scan reads the
source with ``ast`` (nothing is imported) and finds cycles as strongly connected components
(Tarjan) of the module graph.

Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``; those implicit edges are
left out, or every package whose ``__init__`` re-exports a submodule would count as a cycle.
Imports under ``if TYPE_CHECKING:`` are left out too: they never run (an annotation naming
the class that owns the module is not a dependency at import time).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge_infer", "train_host", "calibration", "deploy_jetson", "benchmarks")


def module_files(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under the packages."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """What `from <level dots><name> import ...` in ``module`` names, as an absolute module."""
    if level == 0:
        return name or ""
    base = module.split(".")
    base = base if is_package else base[:-1]  # a package's own dot is the package itself
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _known(name: str, modules) -> str | None:
    """The most specific scanned module that ``name`` or one of its parents is."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(node: ast.AST):
    """Every Import/ImportFrom below ``node`` at any depth, except in the body of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for branch in child.orelse:
                yield from _imports_in(branch)
        else:
            yield from _imports(child)


def _imports_in(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _imports(node)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_edges(modules: dict[str, Path]) -> dict[str, dict[str, list[int]]]:
    """module -> {imported module: [line numbers]} for imports between scanned modules."""
    edges: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        for node in _imports(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [_known(alias.name, modules) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(module, is_package, node.level, node.module)
                # `from pkg import mod` imports the submodule pkg.mod; `from mod import name` imports mod.
                targets = [_known(f"{source}.{alias.name}", modules) if f"{source}.{alias.name}" in modules
                           else _known(source, modules) for alias in node.names]
            for target in targets:
                if target is not None and target != module:
                    if node.lineno not in edges[module][target]:
                        edges[module][target].append(node.lineno)
    return edges


def strongly_connected(nodes, edges) -> list[list[str]]:
    """Tarjan's algorithm (iterative: no recursion limit); components of more than one module."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(edges.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def describe(component, edges, modules) -> str:
    members = set(component)
    lines = [" <-> ".join(component)]
    for a in component:
        for b, linenos in sorted(edges.get(a, {}).items()):
            if b in members:
                rel = modules[a].relative_to(ROOT)
                lines.append(f"    {a} imports {b} at {rel}:{','.join(map(str, linenos))}")
    return "\n".join(lines)


def test_tarjan_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .c import C\n")  # re-export: not a cycle
    (pkg / "a.py").write_text("from .b import B\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")
    (pkg / "sub" / "c.py").write_text("import os\n\ndef g():\n    from ..a import A\n")
    (pkg / "d.py").write_text("from . import a\n")  # into the cycle, not part of it
    (pkg / "e.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .f import F\n")
    (pkg / "f.py").write_text("from .e import E\n")  # e -> f only for annotations: not a cycle
    modules = module_files(tmp_path, ("pkg",))
    edges = import_edges(modules)
    assert edges["pkg.b"] == {"pkg.sub.c": [2]}
    assert edges["pkg.sub.c"] == {"pkg.a": [4]}
    assert "pkg.e" not in edges and edges["pkg.f"] == {"pkg.e": [1]}
    assert strongly_connected(sorted(modules), edges) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_no_import_cycles():
    modules = module_files()
    edges = import_edges(modules)
    cycles = strongly_connected(sorted(modules), edges)
    assert not cycles, "import cycles (move the shared code into a module both import):\n" + "\n".join(
        describe(c, edges, modules) for c in cycles)

"""The package's shape: layers import downward only, no import cycle, no lazy import.

Read from the source with `ast`, so a new module is checked as soon as it exists.
"""

from __future__ import annotations

import ast

import pytest
from conftest import REPO

PACKAGE = REPO / "vmlaunch"
# Bottom to top; a layer may import only layers of a lower rank (and itself).
RANKS = {"errors": 0, "host": 1, "schema": 1, "azure": 2, "lifecycle": 3, "bus": 3,
         "state": 3, "plans": 3, "display": 4, "worker": 5, "runner": 5, "commands": 6,
         "cli": 7}


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def imported(node: ast.AST) -> list[str]:
    """The vmlaunch modules an import statement names (a `from pkg import mod` names mod)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("vmlaunch")]
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vmlaunch"):
        names = [f"{node.module}.{a.name}" for a in node.names]
        return [n for n in names if n in MODULES] or [node.module]
    return []


def layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def edges(tree: ast.Module) -> set[str]:
    return {name for node in ast.walk(tree) for name in imported(node)}


MODULES = modules()


def test_every_module_belongs_to_a_known_layer():
    assert {layer(m) for m in MODULES} - {""} <= set(RANKS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers_import_downward_only(module):
    if not layer(module):
        return
    upward = sorted(t for t in edges(MODULES[module])
                    if layer(t) and layer(t) != layer(module)
                    and RANKS[layer(t)] >= RANKS[layer(module)])
    assert not upward, f"{module} imports a layer at or above its own: {upward}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_inside_a_function(module):
    lazy = [name for node in ast.walk(MODULES[module])
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for inner in ast.walk(node) for name in imported(inner)]
    assert not lazy, f"{module} imports {lazy} inside a function"


def test_no_import_cycle():
    graph = {m: {t for t in edges(tree) if t in MODULES and t != m}
             for m, tree in MODULES.items()}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(node):], node]))
        if node in done:
            return
        for target in sorted(graph[node]):
            if not target.startswith(node + "."):  # a package's __init__ may name its own
                visit(target, [*path, node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])

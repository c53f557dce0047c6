"""The import drawing of scripts/: no circle, counting lazy imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def imports_of(path: Path) -> set[str]:
    """The scripts modules `path` imports, at any depth (`from . import x`, `from .x import y`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("scripts."):
            found.add(node.module.split(".")[1])
    return found


def graph() -> dict[str, set[str]]:
    modules = {path.stem: path for path in SCRIPTS.glob("*.py") if path.stem != "__init__"}
    return {name: imports_of(path) & modules.keys() for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every circle found by a depth-first walk, as the path that closes it."""
    found, done = [], set()

    def walk(node: str, path: list[str]) -> None:
        if node in path:
            found.append([*path[path.index(node) :], node])
            return
        if node in done:
            return
        for target in sorted(edges[node]):
            walk(target, [*path, node])
        done.add(node)

    for node in sorted(edges):
        walk(node, [])
    return found


def test_the_walk_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_lazy_imports_are_read():
    assert "engine" in imports_of(SCRIPTS / "capabilities.py")  # imported inside a function


def test_scripts_import_no_circle():
    assert cycles(graph()) == []


def test_only_the_engine_module_imports_docker_py():
    for path in SCRIPTS.glob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {
            node.module or ""
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 0
        } | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        if path.stem != "engine":
            assert not any(m == "docker" or m.startswith("docker.") for m in modules), path.name


def test_only_the_engine_module_reads_docker_pys_raw_attrs():
    for path in SCRIPTS.glob("*.py"):
        if path.stem != "engine":
            assert ".attrs" not in path.read_text(), path.name


def test_no_arrow_climbs_back_to_the_sessions():
    """steps is imported by nothing here (the noxfile reads its registry); cli only by the
    session modules (steps, and workflows for its parser): the helpers never call back up."""
    edges = graph()
    assert [name for name, targets in edges.items() if "steps" in targets] == []
    assert sorted(name for name, targets in edges.items() if "cli" in targets) == [
        "steps",
        "workflows",
    ]

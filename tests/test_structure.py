"""Scout's own modules import each other without cycles, imports inside functions included.

A cycle hides which module is the foundation and which builds on it; the layout in the
docs/design.md (`models.py` → `scout/store`, `scout/telephony` → `scout/engine` → `scout/web`)
only holds while this test passes."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "models.py", ROOT / "notifier.py", *sorted((ROOT / "scout").rglob("*.py"))]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports_of(path: Path, known: set[str], here: str = "") -> set[str]:
    """Every Scout module that `path` (the module `here`) imports, anywhere in the file.
    `from scout.store import sqlite` names the submodule; `from scout.store import
    open_store` names the package."""
    here = here or module_name(path)
    package = here if is_package(path) else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return {name for name in found if name in known and name != here}


def import_graph() -> dict[str, set[str]]:
    known = {module_name(path) for path in SOURCES}
    return {module_name(path): imports_of(path, known) for path in SOURCES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    trail: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in trail:
            return [*trail[trail.index(name):], name]
        if name in done:
            return None
        trail.append(name)
        for target in sorted(graph[name]):
            cycle = visit(target)
            if cycle:
                return cycle
        trail.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = visit(name)
        if cycle:
            return cycle
    return None


def test_scouts_modules_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
    assert "scout.store.sqlite" in graph and "models" in graph["scout.store.sqlite"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle_through_an_import_inside_a_function(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    source = tmp_path / "models.py"
    source.write_text("def later():\n    from scout.web import create_app\n")
    assert imports_of(source, {"models", "scout.web"}, here="models") == {"scout.web"}

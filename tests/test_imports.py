"""The package's shape: no import cycle between its modules (module-level imports), and small modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vlm_dpo"
MAX_LINES = 600
PIPELINE_MAX_LINES = 250


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str, known: set[str]) -> str | None:
    """The package module `name` refers to (a name imported from a module resolves to the module)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def top_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Package modules imported at module level (not inside functions or classes) by the module at `path`."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vlm_dpo")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("vlm_dpo"):
                source = node.module
            else:
                continue
            # `from . import x` / `from .pkg import mod` import modules; `from .mod import name` the module
            found |= {f"{source}.{a.name}" for a in node.names} | {source}
    return {m for m in (resolve(f, known) for f in found) if m and m != name}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: top_level_imports(path, name, known) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_relative_and_absolute_imports():
    graph = import_graph()
    assert "vlm_dpo.run" in graph["vlm_dpo.pipeline"] and "vlm_dpo.detect" in graph["vlm_dpo.pipeline"]
    assert "vlm_dpo.images" in graph["vlm_dpo.detect"]
    assert "vlm_dpo.train.recipe" in graph["vlm_dpo.train.stage"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_ground_does_not_import_the_toy_world():
    assert not any(m.startswith("vlm_dpo.world") for m in import_graph()["vlm_dpo.ground"])


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert sizes["vlm_dpo.pipeline"] < PIPELINE_MAX_LINES, sizes["vlm_dpo.pipeline"]
    too_big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_big, f"modules over {MAX_LINES} lines: {too_big}"

"""The shape of `hub/`'s imports: no cycles, and the live core free of the web framework.

Read from the source with `ast` (nothing is imported), so a cycle hidden in a function-level
import counts too; imports under `if TYPE_CHECKING:` do not run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HUB = ROOT / "hub"
# The live core does no I/O of its own: the web framework and the server stay above it.
WEB_FRAMEWORKS = ("starlette", "uvicorn")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(HUB.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(name: str) -> set[str]:
    """Every module `name` imports at run time (absolute names, hub's and others')."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            # `from hub.endpoints import docs` imports the submodule hub.endpoints.docs.
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def hub_graph() -> dict[str, set[str]]:
    # A package's own __init__ is left out of its children's edges: importing hub.x.y runs
    # hub/__init__ first, but that is not an import written in hub.x.y.
    return {name: {m for m in imported(name) if m in MODULES and m != name} for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, …, a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)) is not None:
            return cycle
    return None


def test_the_walker_sees_a_cycle() -> None:
    """The check itself can fail: a made-up graph with a cycle is reported as one."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_walker_reads_function_level_imports() -> None:
    """A lazy import inside a function (the usual way a cycle hides) is an edge too."""
    assert "hub.storage.embedded" in imported("hub.app")


def test_no_import_cycle_in_hub() -> None:
    cycle = find_cycle(hub_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_openapi_imports_no_endpoint() -> None:
    """Routes declare their operations and the app hands them over: the builder stays below."""
    assert not {m for m in imported("hub.openapi") if m.startswith("hub.endpoints")}


def test_live_core_imports_no_web_framework() -> None:
    offenders = {
        name: sorted(m for m in imported(name) if m.split(".")[0] in WEB_FRAMEWORKS)
        for name in MODULES
        if name == "hub.live" or name.startswith("hub.live.")
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}

"""No import cycles among the modules of `codec`, `pipeline` and `jobs`.

What counts: every import a module runs, when it is loaded (top level, including the package
`__init__` a `from package import name` runs first) or later (inside a function: deferred, still a
runtime dependency). A cycle makes the import order matter and loads more than a caller asked for.
Imports under `if TYPE_CHECKING:` only name types and are not counted at runtime, but they may not
close a cycle either (`type_only_cycles`): the scheduler's collaborators once took the scheduler as
their "owner" and named its types; they now share `RunContext` and get callbacks.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("codec", "pipeline", "jobs")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(tree: ast.Module, *, deferred: bool, types: bool = False) -> set[str]:
    """Names of modules the import statements name (`a.b` and, for `from a.b import c`, `a.b.c`):
    top level only, or also inside functions (`deferred`); `if TYPE_CHECKING:` blocks with `types`."""
    names: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        if _is_type_checking(node) and not types:
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        nested = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)  # runs later
        if top or deferred or not nested:
            for child in ast.iter_child_nodes(node):
                visit(child, top and not nested)

    for node in tree.body:
        visit(node, True)
    return names


def _graph(*, deferred: bool, types: bool = False) -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        imported = _imported(ast.parse(path.read_text()), deferred=deferred, types=types)
        targets = set()
        for target in imported:
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            parts = target.split(".")
            targets.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def type_only_cycles() -> list[list[str]]:
    return cycles(_graph(deferred=True, types=True))


def test_no_import_cycles_at_import_time() -> None:
    assert cycles(_graph(deferred=False)) == []


def test_no_import_cycles_with_deferred_imports() -> None:
    assert cycles(_graph(deferred=True)) == []


def test_no_import_cycles_even_through_type_only_imports() -> None:
    assert type_only_cycles() == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_a_small_write_side_module_loads_alone() -> None:
    """`pipeline/archive/__init__` is lazy: importing `plan` (GOP spans) used to load the driver, the
    scheduler and Ray through the package."""
    import json
    import subprocess
    import sys

    script = (
        "import json, sys; import pipeline.archive.plan; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('pipeline.archive') or m == 'ray')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["pipeline.archive", "pipeline.archive.plan"]
    from pipeline.archive import ArchiveError, run_archive  # the package's names still resolve

    assert callable(run_archive) and issubclass(ArchiveError, Exception)

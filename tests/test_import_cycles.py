"""No import cycles among the modules of `codec`, `pipeline` and `jobs` at import time.

What counts: every import a module runs when it is loaded (top level, not `if TYPE_CHECKING:` and not
inside functions), including the package `__init__` a `from package import name` runs first. A cycle
there makes the import order matter and loads more than a caller asked for. Imports inside functions
(deferred on purpose) are listed by `lazy_cycles` but not refused yet: 14 modules of
`pipeline/archive` (config, errors, reference, searches, the scheduler, ...) and three pairs
(`codec.gvc.codec`/`digest`, `pipeline.manifest`/`manifest_layout`, `pipeline.audit.costs`/`summary`)
still reach each other that way (issue 27).
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


def _imported(tree: ast.Module, *, lazy: bool) -> set[str]:
    """Names of modules an import statement names (`a.b` and, for `from a.b import c`, `a.b.c`)."""
    nodes = ast.walk(tree) if lazy else tree.body
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _graph(*, lazy: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        imported = _imported(ast.parse(path.read_text()), lazy=lazy)
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


def lazy_cycles() -> list[list[str]]:
    return cycles(_graph(lazy=True))


def test_no_import_cycles_at_import_time() -> None:
    assert cycles(_graph(lazy=False)) == []


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

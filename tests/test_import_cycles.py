"""No import cycles among the modules of `codec`, `pipeline` and `jobs`.

What counts: every import a module runs, when it is loaded (top level, including the package
`__init__` a `from package import name` runs first) or later (inside a function: deferred, still a
runtime dependency; `importlib.import_module` of a module name the module holds counts too). A cycle
makes the import order matter and loads more than a caller asked for. The graph is the one the layer
contracts are checked on (`tests/layer_contracts.py`). Imports under `if TYPE_CHECKING:` only name
types and are not counted at runtime, and they close no loop either (`type_only_cycles`): the
scheduler's collaborators once took the scheduler as their owner and named its types; they now share
`RunContext` and get callbacks.
"""

from __future__ import annotations

from pathlib import Path

from layer_contracts import build_graph

REPO = Path(__file__).resolve().parents[1]

#: Deferred cycles known and named, each with its reason; the test fails when one goes away too, so
#: the list cannot outlive the code. None today: GVC's reference stills once built AV1/GLVC through the
#: registry, which builds GVC by name (`codec/gvc/references.py` now imports the two classes).
KNOWN_DEFERRED_CYCLES: list[list[str]] = []


def _graph(*, deferred: bool, types: bool = False) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (at load time, or also `deferred`, or also `types`)."""
    graph = build_graph(REPO, types=types)
    kinds = {"load"} | ({"deferred"} if deferred else set()) | ({"type"} if types else set())
    return {
        name: {e.target for e in edges if e.when in kinds and e.target in graph.modules}
        for name, edges in graph.edges.items()
    }


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
    assert cycles(_graph(deferred=True)) == KNOWN_DEFERRED_CYCLES


def test_type_only_imports_are_seen_and_close_no_loop() -> None:
    """The graph does see `if TYPE_CHECKING:` imports when asked (so leaving them out is a choice, not
    blindness), and they close no loop beyond the known deferred one."""
    assert [c for c in type_only_cycles() if c not in KNOWN_DEFERRED_CYCLES] == []
    with_types, without = _graph(deferred=True, types=True), _graph(deferred=True)
    assert any(with_types[m] - without.get(m, set()) for m in with_types)


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

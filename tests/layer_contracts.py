"""The layering contracts of `layers.toml`, checked on the import graph of `codec`, `pipeline` and `jobs`.

Why our own checker: import-linter would need a dev dependency (and grimp, a compiled one) for a
few hundred lines of rules; this follows the imports the way the project cares about, in one file.

The graph. Every module's imports are read with `ast` (no code runs):
- `import a.b.c` and `from a.b import c` name modules; `c` counts as a module when `a/b/c.py` exists.
  Relative imports are resolved against the importing module's package.
- *When* an import runs: `load` (a statement at module level, also inside `try`/`if`/class bodies:
  it runs when the module is imported) or `deferred` (inside a function: it runs when the function
  is called — still a dependency of the module, so it counts unless a contract's scope is `load`).
- Imports under `if TYPE_CHECKING:` only name types, never run, and are not in the graph.
- `importlib.import_module(...)` with a string the module holds (the codec registry's
  `"codec.glvc.codec:GlvcCodec"`, the archive package's `_HOMES`): a deferred import of every
  internal module such a string names, since the module imports those by name on use.
- Importing `a.b.c` runs the `__init__` of `a` and `a.b` first: `package` edges. Through one, only
  what that `__init__` imports at load time follows (its functions are not the importer's to call):
  `from pipeline.dataset.plan import plan_archive` runs `pipeline/dataset/__init__`, but not the Ray
  import inside its `read_archive`.
- Third-party imports are leaves, named as imported (`ray.data`); what a third-party package imports
  in turn is not followed (the fresh-process tests in `tests/test_read_side.py` see that).

A contract forbids its `modules` (patterns or group names) to reach its `forbidden` ones through
any chain of imports within its `scope` (`runtime`: load and deferred imports; `load`: only what
importing the module runs). A broken contract is reported with the chain that breaks it.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
CONTRACTS = REPO / "layers.toml"
SCOPES = ("runtime", "load")


class ContractsError(ValueError):
    """The contracts file itself is wrong (an unknown group, a pattern that names nothing, a stale
    allowance): a rule that silently checks nothing is worse than none."""


@dataclass(frozen=True)
class Edge:
    """One import of `target` by `source`: `when` it runs (load/deferred) and `via` what (a statement,
    an implicit parent-package `__init__`, or `importlib` by name), with the line for the message."""

    source: str
    target: str
    when: str  # "load" | "deferred" | "type" (only in a graph built with types=True)
    via: str  # "import" | "package" | "by name"
    path: str
    line: int

    def describe(self) -> str:
        if self.line == 0:  # the checked module's own package: importing it runs that __init__ first
            return f"{self.path} is in this package"
        how = {"import": "", "package": ", its package __init__", "by name": ", importlib by name"}[self.via]
        when = ", inside a function" if self.when == "deferred" else ""
        return f"{self.path}:{self.line}{when}{how}"


@dataclass
class Graph:
    """Internal modules (name -> path relative to the root) and the imports of each."""

    root: Path
    packages: tuple[str, ...]
    modules: dict[str, str]
    edges: dict[str, list[Edge]] = field(default_factory=dict)

    def is_internal(self, name: str) -> bool:
        return name.split(".")[0] in self.packages


def discover(root: Path, packages: tuple[str, ...]) -> dict[str, str]:
    """Every `.py` file of the packages as a dotted module name (`a/b/__init__.py` is `a.b`)."""
    found: dict[str, str] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = str(path.relative_to(root))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def module_edges(graph: Graph, name: str, *, types: bool = False) -> list[Edge]:
    """The imports of one module (see the module docstring for what counts and how); with `types`,
    also those under `if TYPE_CHECKING:` (when="type": `tests/test_import_cycles.py` lists the cycles
    they would close; no contract follows them)."""
    path = graph.modules[name]
    tree = ast.parse((graph.root / path).read_text(), filename=path)
    is_package = path.endswith("__init__.py")
    package = name if is_package else name.rpartition(".")[0]
    own = {name, *_ancestors(name)}  # already loaded when this module's code runs
    edges: list[Edge] = []
    strings: list[tuple[str, int]] = []
    uses_import_module = False

    def add(target: str, when: str, via: str, line: int) -> None:
        if target not in own:
            edges.append(Edge(name, target, when, via, path, line))

    def named(target: str, when: str, line: int, *, full: bool = True) -> None:
        """`target` named by a statement: its parents' `__init__`s run first (package edges)."""
        if graph.is_internal(target):
            for parent in _ancestors(target):
                add(parent, when, "package", line)
            if target in graph.modules:
                add(target, when, "import" if full else "package", line)
        else:
            add(target, when, "import", line)

    def visit(node: ast.AST, when: str) -> None:
        nonlocal uses_import_module
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            if types:
                for child in node.body:
                    visit(child, "type")
            for child in node.orelse:
                visit(child, when)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                named(alias.name, when, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            submodules = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in graph.modules]
            # `from pkg import sub` uses sub, and runs pkg's __init__ only as its package
            named(module, when, node.lineno, full=len(submodules) < len(node.names))
            for sub in submodules:
                add(sub, when, "import", node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.append((node.value.split(":")[0], node.lineno))
        elif isinstance(node, ast.Attribute) and node.attr == "import_module":
            uses_import_module = True
        nested = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        inner = "deferred" if nested and when == "load" else when
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, "load")
    if uses_import_module:
        for text, line in strings:
            if text in graph.modules:
                add(text, "deferred", "by name", line)
    return edges


def build_graph(
    root: Path = REPO, packages: tuple[str, ...] = ("codec", "pipeline", "jobs"), *, types: bool = False
) -> Graph:
    graph = Graph(root, packages, discover(root, packages))
    graph.edges = {name: module_edges(graph, name, types=types) for name in graph.modules}
    return graph


def matches(pattern: str, name: str) -> bool:
    """`a.b` names module `a.b` and everything under it; a component may be a glob (`pipeline.bench_*`)."""
    want, have = pattern.split("."), name.split(".")
    return len(want) <= len(have) and all(fnmatchcase(h, w) for w, h in zip(want, have, strict=False))


def _specificity(pattern: str) -> tuple[int, int]:
    return len(pattern.split(".")), -sum(c in pattern for c in "*?[")


def assign_groups(graph: Graph, groups: dict[str, list[str]]) -> dict[str, str]:
    """Each module's group: the one whose pattern names it most closely (`pipeline.audit` beats
    `pipeline`), so a new module belongs to its folder's group without being listed anywhere."""
    found: dict[str, str] = {}
    for module in graph.modules:
        best: list[tuple[tuple[int, int], str]] = sorted(
            (
                (_specificity(p), group)
                for group, patterns in groups.items()
                for p in patterns
                if matches(p, module)
            ),
            reverse=True,
        )
        if not best:
            raise ContractsError(f"{module} is in no group of {CONTRACTS.name}")
        if len(best) > 1 and best[0][0] == best[1][0] and best[0][1] != best[1][1]:
            raise ContractsError(f"{module} is in two groups equally: {best[0][1]} and {best[1][1]}")
        found[module] = best[0][1]
    return found


@dataclass
class Violation:
    """A forbidden import reached: the last edge (the import that is not allowed here), the shortest
    chain from a checked module to it, and every checked module that reaches it."""

    chain: list[Edge]
    sources: set[str]

    def describe(self) -> str:
        hops = [self.chain[0].source] + [f"-> {e.target}  [{e.describe()}]" for e in self.chain]
        others = sorted(self.sources - {self.chain[0].source})
        if others:
            shown = ", ".join(others[:8]) + (f" and {len(others) - 8} more" if len(others) > 8 else "")
            hops.append(f"(also reached from {shown})")
        return "\n      ".join(hops)


@dataclass
class Result:
    name: str
    scope: str
    checked: int
    violations: list[Violation]
    reason: str = ""

    @property
    def kept(self) -> bool:
        return not self.violations

    def describe(self) -> str:
        if self.kept:
            return f"KEPT    {self.name} ({self.scope}; {self.checked} modules)"
        lines = [f"BROKEN  {self.name} ({self.scope}; {self.checked} modules)"]
        if self.reason:
            lines.append(f"    why the rule: {self.reason}")
        lines += [f"    {v.describe()}" for v in self.violations]
        return "\n".join(lines)


class Contracts:
    """The contracts file read and resolved against one graph."""

    def __init__(self, config: dict[str, Any], graph: Graph) -> None:
        self.graph = graph
        self.groups: dict[str, list[str]] = config.get("groups", {})
        self.group_of = assign_groups(graph, self.groups)
        self.contracts = [c for spec in config.get("contracts", []) for c in self._expand(spec)]

    def _expand(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        """A `layers` contract is one forbidden contract per layer: no layer imports one above it."""
        if spec.get("kind", "forbidden") == "forbidden":
            return [spec]
        if spec["kind"] != "layers":
            raise ContractsError(f"contract {spec.get('name')!r}: unknown kind {spec['kind']!r}")
        layers = spec["layers"]
        return [
            dict(spec, kind="forbidden", name=f"{spec['name']}: {low} never imports {', '.join(layers[:i])}",
                 modules=[low], forbidden=layers[:i])
            for i, low in enumerate(layers) if i
        ]  # fmt: skip

    def select(self, entries: list[str], what: str) -> tuple[set[str], list[str]]:
        """Internal modules named by group names or patterns, and the external patterns."""
        internal: set[str] = set()
        external: list[str] = []
        for entry in entries:
            if entry in self.groups:
                internal |= {m for m, g in self.group_of.items() if g == entry}
            elif self.graph.is_internal(entry):
                hit = {m for m in self.graph.modules if matches(entry, m)}
                if not hit:
                    raise ContractsError(f"{what}: {entry!r} names no module and no group")
                internal |= hit
            else:
                external.append(entry)
        return internal, external

    def check(self, spec: dict[str, Any]) -> Result:
        name = spec["name"]
        scope = spec.get("scope", "runtime")
        if scope not in SCOPES:
            raise ContractsError(f"contract {name!r}: scope must be one of {SCOPES}, not {scope!r}")
        sources, _ = self.select(spec["modules"], f"contract {name!r} modules")
        sources -= self.select(spec.get("except", []), f"contract {name!r} except")[0]
        bad_internal, bad_external = self.select(spec["forbidden"], f"contract {name!r} forbidden")
        allowed = [(a["import"].split("->"), a) for a in spec.get("allow", [])]
        used: set[int] = set()

        def forbidden(target: str) -> str | None:
            """What `target` is forbidden as: itself (one of ours) or the third-party pattern it matches."""
            if target in bad_internal:
                return target
            return next((p for p in bad_external if matches(p, target)), None)

        def allowance(edge: Edge) -> bool:
            for i, ((importer, imported), _) in enumerate(allowed):
                if edge.source == importer.strip() and matches(imported.strip(), edge.target):
                    used.add(i)
                    return True
            return False

        found: dict[tuple[str, str], Violation] = {}
        for source in sorted(sources):
            for chain in self._reach(source, scope, forbidden, allowance):
                key = (chain[-1].source, forbidden(chain[-1].target) or "")
                if key in found:
                    found[key].sources.add(source)
                    if len(chain) < len(found[key].chain):
                        found[key].chain = chain
                else:
                    found[key] = Violation(chain, {source})
        stale = [a["import"] for i, (_, a) in enumerate(allowed) if i not in used]
        if stale:
            raise ContractsError(f"contract {name!r}: allowed import(s) no longer in the code: {stale}")
        # `from a.b.c import x` reaches a.b's `__init__` too: one import, reported once, by what it names
        named = {(e.source, e.line) for v in found.values() if (e := v.chain[-1]).via != "package"}
        kept = [
            v
            for v in found.values()
            if v.chain[-1].via != "package" or (v.chain[-1].source, v.chain[-1].line) not in named
        ]
        violations = sorted(kept, key=lambda v: (len(v.chain), v.chain[-1].source, v.chain[-1].target))
        return Result(name, scope, len(sources), violations, spec.get("reason", ""))

    def _reach(self, source: str, scope: str, forbidden, allowance) -> list[list[Edge]]:
        """Shortest chains from `source` to each forbidden module it reaches (breadth first).

        A state is (module, full): `full` when the importer may use any of the module's code, so its
        deferred imports count (scope `runtime`); reached only as a parent package, or in scope
        `load`, just its load-time imports follow. An allowance exempts an import of the checked
        module itself only: whoever reaches that module and uses it still reaches what it imports."""
        start = (source, scope == "runtime")
        parent: dict[tuple[str, bool], tuple[tuple[str, bool], Edge] | None] = {start: None}
        queue = deque([start])
        own = [Edge(source, p, "load", "package", self.graph.modules[source], 0) for p in _ancestors(source)]
        hits: list[list[Edge]] = []
        while queue:
            state = queue.popleft()
            module, full = state
            for edge in self.graph.edges.get(module, []) + (own if module == source else []):
                if (
                    edge.when == "type"
                    or (edge.when == "deferred" and not full)
                    or (module == source and allowance(edge))
                ):
                    continue
                nxt = (edge.target, full and edge.via != "package")
                if nxt in parent or (edge.target, True) in parent:
                    continue  # seen (a full visit covers a load-only one)
                parent[nxt] = (state, edge)
                if forbidden(edge.target) is not None:
                    hits.append(self._chain(parent, nxt))
                elif edge.target in self.graph.modules:
                    queue.append(nxt)
        return hits

    @staticmethod
    def _chain(parent: dict, state: tuple[str, bool]) -> list[Edge]:
        chain: list[Edge] = []
        while parent[state] is not None:
            state, edge = parent[state]
            chain.append(edge)
        return chain[::-1]

    def results(self) -> list[Result]:
        return [self.check(spec) for spec in self.contracts]


def load(path: Path = CONTRACTS, root: Path = REPO) -> Contracts:
    config = tomllib.loads(path.read_text())
    return Contracts(config, build_graph(root, tuple(config.get("packages", ["codec", "pipeline", "jobs"]))))


def main(argv: list[str] | None = None) -> int:
    """`python tests/layer_contracts.py [CONTRACTS_FILE [ROOT]]`: every contract, KEPT or BROKEN with
    the chains that break it; exit status 1 when one is broken."""
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else CONTRACTS
    results = load(path, Path(argv[1]) if len(argv) > 1 else REPO).results()
    print("\n".join(r.describe() for r in results))
    return 0 if all(r.kept for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

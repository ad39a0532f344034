"""The import graph of the package, read with `ast` (nothing is imported), and its cycles.

Edges come from ALL import statements: module level, inside functions (lazy), inside `try`, and
inside `if TYPE_CHECKING:` blocks (marked type_only). Only explicit import statements are edges:
Python runs `minibridge/bridge/__init__.py` before `minibridge.bridge.x`, but that is not an edge
from `x` to its package. `from pkg import name` is an edge to `pkg.name` when that is a module, else
to `pkg`. tests/test_layout.py checks the rules of docs/architecture.md on this graph.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTED = "torch.distributed"


def package_sources() -> dict[str, Path]:
    """setup.py's SOURCES (import name -> source folder), read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    (value,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
                and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["SOURCES"]]
    return {name: ROOT / folder for name, folder in ast.literal_eval(value).items()}


# ---- the graph ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Edge:
    source: str          # importing module
    target: str          # imported project module, or DISTRIBUTED
    path: Path
    line: int
    lazy: bool           # inside a function: runs on call, not on import
    type_only: bool      # inside `if TYPE_CHECKING:`: never runs
    names: tuple[str, ...] = ()   # `from X import a, b` with X the target: the names taken from it

    def where(self) -> str:
        kind = "type-only" if self.type_only else "lazy" if self.lazy else "module level"
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line} ({kind})"


def find_modules(sources: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Every module: dotted name -> (file, is a package __init__)."""
    found = {}
    for package, folder in sources.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if "__pycache__" in parts:
                continue
            is_pkg = parts[-1] == "__init__"
            found[".".join([package, *parts[: len(parts) - is_pkg]])] = (path, is_pkg)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, lazy=False, type_only=False):
    """Yield (node, lazy, type_only) for every node below `node`."""
    functions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for branch, only in ((child.body, True), (child.orelse, type_only)):   # `else:` runs
                for sub in branch:
                    sub_lazy = lazy or isinstance(sub, functions)
                    yield sub, sub_lazy, only
                    yield from _walk(sub, sub_lazy, only)
            continue
        child_lazy = lazy or isinstance(child, functions)
        yield child, child_lazy, type_only
        yield from _walk(child, child_lazy, type_only)


def project_module(name: str, modules) -> str | None:
    """The longest prefix of a dotted name that is a project module (None outside the project)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def _distributed(name: str) -> bool:
    return name == DISTRIBUTED or name.startswith(DISTRIBUTED + ".")


def resolve_from(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module of `from <dots><node.module> import ...` written in `module`."""
    if not node.level:
        return node.module
    package = module if is_pkg else module.rpartition(".")[0]   # an __init__ is its own package
    return importlib.util.resolve_name("." * node.level + (node.module or ""), package)


def module_edges(module: str, path: Path, is_pkg: bool, modules) -> list[Edge]:
    """The import edges of one module to project modules and to torch.distributed."""
    edges = []
    for node, lazy, type_only in _walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = project_module(alias.name, modules) or (DISTRIBUTED if _distributed(alias.name) else None)
                if target:
                    edges.append(Edge(module, target, path, node.lineno, lazy, type_only))
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(module, is_pkg, node)
            taken: dict[str, list[str]] = {}
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:                       # `from pkg import submodule`
                    taken.setdefault(full, [])
                elif _distributed(full):
                    taken.setdefault(DISTRIBUTED, [])
                elif (target := project_module(base, modules)) is not None:
                    taken.setdefault(target, []).append(alias.name)
            edges += [Edge(module, t, path, node.lineno, lazy, type_only, tuple(n)) for t, n in taken.items()]
    return edges


def all_edges(modules) -> list[Edge]:
    return [e for m, (p, is_pkg) in modules.items() for e in module_edges(m, p, is_pkg, modules)]



# ---- cycles ------------------------------------------------------------------------------------
def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on long chains)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(sorted(graph[root])))]
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while not component or component[-1] != node:
                        component.append(stack.pop())
                        on_stack.discard(component[-1])
                    components.append(sorted(component))
    return components


def _shortest_path(graph: dict[str, set[str]], start: str, goal: str, inside: set[str]) -> list[str]:
    """Breadth-first: the shortest path start -> goal through the modules of `inside`."""
    previous, frontier = {start: None}, [start]
    while frontier and goal not in previous:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & inside):
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    path, node = [], goal
    while node is not None:
        path.append(node)
        node = previous[node]
    return path[::-1]


def cycle_report(modules, edges) -> list[str]:
    """One entry per cycle of modules: a shortest cycle through each of its edges, with the sites."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    sites: dict[tuple[str, str], list[Edge]] = {}
    for e in edges:
        if not e.type_only and e.target in modules and e.source != e.target:
            graph[e.source].add(e.target)
            sites.setdefault((e.source, e.target), []).append(e)
    report = []
    for component in strongly_connected(graph):
        if len(component) < 2:
            continue
        members, seen = set(component), set()
        lines = [f"cycle among {len(component)} modules: {', '.join(component)}"]
        for source in component:
            for target in sorted(graph[source] & members):
                cycle = [source] + _shortest_path(graph, target, source, members)
                if (key := frozenset(zip(cycle, cycle[1:]))) in seen:
                    continue
                seen.add(key)
                lines.append("  " + " -> ".join(cycle))
                for a, b in zip(cycle, cycle[1:]):
                    lines += [f"      {a} -> {b}  at {e.where()}" for e in sites[(a, b)]]
        report.append("\n".join(lines))
    return report

"""The shape of the package, read from its source: the import graph of ``agc/`` and ``backends/``
has no cycle, every layer imports only downwards, and library code logs instead of printing.

Imports are read with ``ast`` wherever they are (module level or inside a function: a lazy
import is an import), except under ``if TYPE_CHECKING:``, which never runs.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agc", "backends")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the two packages: dotted name -> file."""
    return {
        _module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _import_nodes_of(child))
            continue
        yield from _import_nodes_of(node)


def _import_nodes_of(node: ast.AST):
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    yield from _import_nodes(node)


@cache
def imports() -> dict[str, frozenset[str]]:
    """The graph: module -> the project modules it imports."""
    known = modules()
    graph = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in known else base)
        graph[name] = frozenset(t for t in targets if t in known and t != name)
    return graph


def reachable(start: str) -> set[str]:
    """Every project module that importing ``start`` can import."""
    seen, todo = set(), [start]
    while todo:
        for target in imports()[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def importers(module: str) -> set[str]:
    return {name for name, targets in imports().items() if module in targets}


def test_the_graph_is_read():
    """The reader finds direct, relative and lazy imports (so the tests below can fail)."""
    graph = imports()
    assert "agc.chunks" in graph["agc.engines"]  # module level
    assert "agc.synth.writer" in graph["agc.synth"]  # relative: from .writer import ...
    assert "agc.runner" in graph["agc"]  # lazy, inside agc.__getattr__
    assert "backends.profiles" in graph["backends.local"]  # lazy, inside a method


def test_no_import_cycle():
    graph, state, cycles = imports(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


def test_only_the_cli_the_benchmarks_and_the_api_import_the_runner():
    # agc.implementations runs one point of the implementations benchmark in its own process
    assert importers("agc.runner") <= {"agc", "agc.cli", "agc.bench", "agc.implementations"}


def test_the_worker_layer_imports_only_catalog_reader_analysis_and_metrics():
    allowed = {"agc.catalog", "agc.reader", "agc.metrics", "agc.analysis"}
    assert imports()["agc.chunks"] <= allowed
    upper = {"agc.engines", "agc.cache", "agc.runner", "agc.cli", "agc.bench", "agc.outputs"}
    for lower in ("agc.chunks", "agc.catalog", "agc.reader", "agc.analysis", "agc.vocabulary"):
        assert not reachable(lower) & upper, lower


def test_engines_do_not_know_the_cache_and_the_cache_does_not_know_the_runner():
    assert "agc.cache" not in reachable("agc.engines")
    assert not {"agc.runner", "agc.outputs"} & reachable("agc.cache")


@pytest.mark.parametrize(
    "module",
    ["agc.synth", "backends.local", "backends.slurm", "backends.dask_cluster", "backends.gpu"],
)
def test_generator_and_backends_never_import_the_analysis(module):
    """The generator must not be tuned to the selection; backends run whatever they are given."""
    assert not {m for m in reachable(module) if m.startswith("agc.analysis")}
    assert "agc.chunks" not in reachable(module)


def test_the_vocabulary_imports_nothing_of_the_package():
    assert imports()["agc.vocabulary"] == frozenset()


#: Command-line programs (their output is what they print) and the CLI entry points.
COMMAND_MODULES = {
    "agc.cli",
    "agc.cache.cli",
    "backends.cli",
    "agc.notebooks",
    "agc.implementations",  # its main() is the child process of one benchmark point
    "agc.synth._extract_schema",
    "backends.standins.condor",
    "backends.standins.dirac",
}


def test_library_code_logs_instead_of_printing():
    prints = []
    for name, path in modules().items():
        if name in COMMAND_MODULES:
            continue
        tree = ast.parse(path.read_text())
        commands = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef) and f.name.startswith("cmd_")
            for n in ast.walk(f)
        }
        prints += [
            f"{name}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "print"
            and id(node) not in commands
        ]
    assert prints == []

"""The engine's import graph: no cycle, and no module importing one of a higher layer.

Every ``import`` and ``from ... import`` in every engine module counts, wherever it stands (at
the top, inside a function, under ``if TYPE_CHECKING:``): a function-level import hides a cycle
from Python but not from a reader. A module not placed in ``LAYERS`` fails the test until it
is placed, so the layout stays a decision.
"""

from __future__ import annotations

import ast
from pathlib import Path

import engine

ROOT = Path(engine.__file__).parent

#: Lowest first; a module may import modules of its own layer or of lower ones. ``engine.x.*``
#: places every module of the package ``engine.x``. Storage sits above the network layer
#: because a Unity Catalog Volume is a filesystem spoken to over the Files API with a token.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "pure core",
        (
            "engine.errors", "engine.retry", "engine.batching", "engine.codec", "engine.schema",
            "engine.ordering", "engine.lazy", "engine.adaptive", "engine.hang", "engine.rejects",
            "engine.stats", "engine.config", "engine.logs",
        ),
    ),
    ("time and tasks", ("engine.clock", "engine.aio", "engine.timeline", "engine.progress")),
    (
        "network",
        (
            "engine.transport", "engine.calls", "engine.tokens", "engine.auth",
            "engine.workspace", "engine.tracking", "engine.mlflow_artifacts",
        ),
    ),
    (
        "storage",
        (
            "engine.durable", "engine.runlock", "engine.volumes", "engine.location",
            "engine.checkpoint", "engine.delta_table",
        ),
    ),
    (
        "data in and out",
        (
            "engine.source", "engine.source.*", "engine.sink", "engine.sink.*",
            "engine.delta_sink", "engine.encoders",
        ),
    ),
    (
        "the run",
        (
            "engine.dispatch", "engine.pipeline", "engine.prepare", "engine.describe",
            "engine.report", "engine.runrecord", "engine.telemetry", "engine.otel",
            "engine.pushgateway",
        ),
    ),
    ("library API", ("engine.api", "engine.options")),
    (
        "entry points",
        (
            "engine", "engine.allocator", "engine.__main__", "engine.cli", "engine.airflow",
            "engine.spark",
            "engine.demo", "engine.emulator", "engine.emulator.*",
        ),
    ),
)


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ["engine", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The engine modules ``name`` imports (a name imported from a package may be a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            # A module's own package runs first whenever it is imported: not an edge.
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _layer(name: str) -> int | None:
    for level, (_, members) in enumerate(LAYERS):
        for member in members:
            if name == member or (
                member.endswith(".*") and name.startswith(member.removesuffix("*"))
            ):
                return level
    return None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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


def test_every_engine_module_is_placed_in_a_layer() -> None:
    unplaced = sorted(name for name in _modules() if _layer(name) is None)
    assert unplaced == [], f"place these modules in LAYERS: {unplaced}"


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycles(_graph()) == []


def test_no_module_imports_one_of_a_higher_layer() -> None:
    upward = []
    for name, imported in sorted(_graph().items()):
        level = _layer(name)
        for other in sorted(imported):
            other_level = _layer(other)
            if level is not None and other_level is not None and other_level > level:
                upward.append(
                    f"{name} ({LAYERS[level][0]}) imports {other} ({LAYERS[other_level][0]})"
                )
    assert upward == []


def test_the_checks_see_a_cycle_and_an_upward_import() -> None:
    """The helpers themselves: a planted cycle is found, a planted upward edge is named."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("engine.errors") == 0
    assert _layer("engine.sink.writer") == _layer("engine.sink")
    assert _layer("engine.cli") > _layer("engine.api") > _layer("engine.pipeline")  # type: ignore[operator]
    assert _layer("engine.not_a_module") is None

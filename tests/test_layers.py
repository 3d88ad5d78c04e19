"""The documented layer order of llmos (STYLE.md §2), checked on every import in `llmos/`.

Each module belongs to the layer of its longest matching prefix below. An import may go down or
sideways, never up; function-local and TYPE_CHECKING imports count too, and no two modules may
import each other in a cycle. The kernel in addition never imports storage: it knows processes,
blocks and models, never where a model file came from (that is `llmos.system`'s job).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "llmos"

# Lowest first. A prefix names a package or a module; the longest matching prefix wins.
LAYERS: list[tuple[str, ...]] = [
    ("llmos.config", "llmos.errors", "llmos.log"),
    ("llmos.ops",),
    ("llmos.monitor.metrics", "llmos.monitor.events", "llmos.monitor.eventlog", "llmos.storage"),
    ("llmos.models",),
    ("llmos.kernel",),
    ("llmos.jobs",),
    (
        "llmos.security",
        "llmos.optimize",
        "llmos.train",
        "llmos.agents",
        "llmos.cluster",
        "llmos.monitor",
    ),
    ("llmos.system",),
    ("llmos.api", "llmos.cli", "llmos.web", "llmos.llm", "llmos.client", "llmos"),
]
# (importer prefix, imported prefix) pairs that are refused even where the order allows them.
FORBIDDEN = [("llmos.kernel", "llmos.storage")]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, source: str | None = None) -> set[str]:
    """Every llmos module `path` imports, wherever the import statement stands."""
    tree = ast.parse(source if source is not None else path.read_text())
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from llmos.x import y` may import the submodule llmos.x.y.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "llmos" or name.startswith("llmos.")}


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for idx, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = idx, len(prefix)
    assert best >= 0, f"{module} is in no layer: add it to LAYERS in tests/test_layers.py"
    return best


def is_under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Upward or forbidden imports in `graph` (module -> the llmos modules it imports)."""
    found = []
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target not in graph:
                continue  # `from pkg import name` where name is not a module
            if layer_of(target) > layer_of(importer):
                found.append(f"{importer} imports {target}, a higher layer")
            for low, high in FORBIDDEN:
                if is_under(importer, low) and is_under(target, high):
                    found.append(f"{importer} imports {target}: {low} never imports {high}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (package `__init__` re-exports of children excluded)."""
    edges = {
        m: {t for t in ts if t in graph and t != m and not is_under(t, m)}
        for m, ts in graph.items()
    }
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(path) for name, path in all_modules().items()}


def test_every_module_has_a_layer() -> None:
    for name in all_modules():
        layer_of(name)


def test_no_import_goes_up_the_layer_order() -> None:
    assert violations(import_graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        # A function-local import of the API from the kernel.
        (
            "llmos/kernel/engine.py",
            "def f():\n    from llmos.api.app import create_app\n",
            "llmos.kernel.engine imports llmos.api.app, a higher layer",
        ),
        # The kernel reaching into storage (lower, but forbidden).
        (
            "llmos/kernel/residency.py",
            "import llmos.storage.registry\n",
            "llmos.kernel.residency imports llmos.storage.registry: "
            "llmos.kernel never imports llmos.storage",
        ),
        # A relative import from models up into the kernel.
        (
            "llmos/models/llama.py",
            "from ..kernel import engine\n",
            "llmos.models.llama imports llmos.kernel.engine, a higher layer",
        ),
    ],
)
def test_a_planted_upward_import_is_caught(module: str, source: str, expected: str) -> None:
    graph = import_graph()
    path = ROOT.parent / module
    name = module_name(path)
    graph[name] = graph[name] | imports_of(path, source)
    assert expected in violations(graph)


def test_a_planted_cycle_is_caught() -> None:
    graph = import_graph()
    graph["llmos.errors"] = graph["llmos.errors"] | {"llmos.config"}
    graph["llmos.config"] = graph["llmos.config"] | {"llmos.errors"}
    assert any({"llmos.errors", "llmos.config"} <= set(c) for c in cycles(graph))

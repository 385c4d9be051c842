"""The house rules the tree keeps: layered imports without cycles, Ray only in runtime, small modules and functions.

Every import counts, including those inside functions (a lazy import is still
a dependency). A package may import from its own package or from a strictly
lower layer; the README's "Working on geoseg" explains the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "geoseg"

# Higher numbers sit above lower ones. A new package gets a layer here.
LAYERS = {
    "errors": 0,
    "_version": 0,
    "config": 1,
    "tiling": 2,
    "io": 3,
    "models": 3,
    "synthetic": 4,
    "infer": 4,
    "evaluate": 4,
    "vectorize": 4,
    "train": 5,
    "impact": 5,
    "report": 6,
    "runtime": 6,
    "stages": 7,
    "job": 8,
    "bench": 9,
    "cli": 10,
    "__init__": 10,
    "__main__": 11,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every geoseg module ``path`` imports, at any depth of its code."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            found.update(name if name in MODULES else target for name in names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "geoseg" or name.startswith("geoseg.")}


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(path) for name, path in MODULES.items()}


def layer_of(module: str) -> tuple[str, int]:
    """The top-level part of geoseg a module belongs to, and its layer."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top not in LAYERS:
        raise KeyError(f"{module}: package {top!r} has no layer; add it to LAYERS in {__file__}")
    return top, LAYERS[top]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import that reaches the same or a higher layer in another package."""
    wrong = []
    for module, targets in sorted(graph.items()):
        own, level = layer_of(module)
        for target in sorted(targets):
            other, other_level = layer_of(target)
            if other != own and other_level >= level:
                wrong.append(f"{module} imports {target} ({own} is layer {level}, {other} layer {other_level})")
    return wrong


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), plus modules importing themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        own = layer_of(module)[0]
        packages.setdefault(own, set()).update(layer_of(t)[0] for t in targets if layer_of(t)[0] != own)
    return packages


def test_every_import_runs_down_the_layers():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles_between_files_or_packages():
    graph = import_graph()
    # A package's __init__ re-exports its modules; a module importing its own package's __init__
    # is the one harmless loop, so those edges are left out of the file-level check.
    files = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    assert cycles(files) == []
    assert cycles(package_graph(graph)) == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = {"geoseg.io.raster": {"geoseg.stages.predict"}, "geoseg.stages.predict": {"geoseg.io.raster"}}
    assert upward_imports(graph) == ["geoseg.io.raster imports geoseg.stages.predict (io is layer 3, stages layer 7)"]
    assert cycles(graph) == [["geoseg.io.raster", "geoseg.stages.predict"]]
    same_layer = {"geoseg.infer.predict": {"geoseg.vectorize.export"}}
    assert upward_imports(same_layer)  # two packages of one layer may not import each other either
    with pytest.raises(KeyError, match="has no layer"):
        layer_of("geoseg.newpackage.module")


def test_only_runtime_imports_ray():
    ray_users = sorted(
        name
        for name, path in MODULES.items()
        if any(n == "ray" or n.startswith("ray.") for n in _external_imports(path))
        and not name.startswith("geoseg.runtime")
    )
    assert ray_users == []


def _external_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_modules_stay_small():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 420}
    assert long == {}


def test_functions_stay_short():
    """No function over 80 lines (docstring included): long ones get split into named steps."""
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []

"""The package's shape: no import cycle between its parts, and the layering the design
document describes (docs/design.md). Imports inside functions count: a lazy import is still
a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgedistill"


def _part(module: str) -> str:
    """``edgedistill.eval.knn`` -> ``eval``; ``edgedistill.rundir`` -> ``rundir``."""
    return module.split(".")[1]


def _imports(path: Path) -> set[str]:
    module = "edgedistill." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[:-node.level]
                found.add(".".join(base + [node.module]))
            else:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names if node.module == "edgedistill"}
    return {m for m in found if m.startswith("edgedistill.") and m != "edgedistill"}


def dependency_graph() -> dict[str, set[str]]:
    """part -> the parts it imports (top-level modules and subpackages of edgedistill)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE and path.name in ("__init__.py", "__main__.py"):
            continue
        part = _part("edgedistill." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        graph.setdefault(part, set()).update(_part(m) for m in _imports(path) if _part(m) != part)
    parts = set(graph)  # names imported from the package itself (__version__) are not parts
    return {part: deps & parts for part, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one part (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_packages():
    graph = dependency_graph()
    assert {"train", "eval", "export", "bench", "runtime", "models", "data", "cli"} <= set(graph)
    assert cycles(graph) == []


def test_layers():
    """The runtime and the leaves import nothing above them; evaluation does not import
    training (training's online k-NN uses evaluation); only the CLI imports the CLI."""
    graph = dependency_graph()
    assert graph["runtime"] <= {"errors", "utils", "cleanup", "limits"}, graph["runtime"]
    for leaf in ("errors", "cleanup", "network", "options", "progress"):
        assert graph.get(leaf, set()) <= {"errors"}, (leaf, graph.get(leaf))
    assert graph["utils"] <= {"errors", "cleanup"}, graph["utils"]
    assert graph["limits"] <= {"errors", "utils"}, graph["limits"]
    assert graph["rundir"] <= {"errors", "config", "utils"}, graph["rundir"]
    assert "train" not in graph["eval"] and "train" not in graph["export"]
    assert not [p for p, deps in graph.items() if "cli" in deps and p != "cli"]


def _naming(pattern: str) -> set[str]:
    """The modules (paths under edgedistill/) whose text matches ``pattern``, case-insensitive."""
    import re

    regex = re.compile(pattern, re.IGNORECASE)
    return {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py") if regex.search(path.read_text())}


def test_runtimes_are_named_only_by_the_registry():
    """One package per runtime: outside it, a runtime's name is the registry's list (and, for
    the two whose embedders ``edgedistill.runtime`` exports by name, that export). Known
    exceptions are someone else's names: ONNX Runtime's OpenVINO execution provider, and
    onnxruntime-web (the browser runtime is that library)."""
    from edgedistill.runtime import registry

    exports = {"runtime/registry.py", "runtime/__init__.py"}
    allowed = {
        "onnxruntime": exports | {"runtime/browser/__init__.py", "runtime/browser/page.py"},
        "openvino": exports | {"runtime/onnxruntime/__init__.py"},
        "executorch": {"runtime/registry.py"},
        "litert|tflite": {"runtime/registry.py"},
        "browser": {"runtime/registry.py"},
    }
    packages = {r.name: type(r).__module__.split(".")[-1] for r in registry.RUNTIMES}
    assert set(packages.values()) == {"onnxruntime", "openvino", "executorch", "litert", "browser"}
    for pattern, outside in allowed.items():
        own = packages.get(pattern.split("|")[0], pattern.split("|")[0])
        found = {m for m in _naming(pattern) if not m.startswith(f"runtime/{own}/")}
        assert found <= outside, (pattern, sorted(found - outside))

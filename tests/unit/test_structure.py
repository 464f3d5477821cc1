"""The code's shape, read from its imports: the boundaries docs/architecture.md promises.

Static (ast, nothing imported), so a cycle or a leak of the transport fails here with the
import that made it, before it becomes a confusing ImportError at start-up.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service" / "whybert_service"
CLIENT = ROOT / "client" / "whybert"


def _modules(package: Path, name: str) -> Iterator[tuple[str, Path]]:
    for path in sorted(package.rglob("*.py")):
        if "v1" in path.relative_to(package).parts:  # generated stubs
            continue
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join([name, *parts]), path


def _nodes(tree: ast.AST, at_import_time: bool) -> Iterator[ast.AST]:
    """Every node, or (`at_import_time`) those outside function bodies: what runs on import."""
    for node in ast.iter_child_nodes(tree):
        if at_import_time and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        yield node
        yield from _nodes(node, at_import_time)


def _imports(module: str, path: Path, at_import_time: bool = False) -> Iterator[tuple[str, int]]:
    """Absolute names of what a module imports, with the line, relative imports resolved;
    with `at_import_time`, only those that run when the module is imported (not the lazy
    ones inside functions, such as an optional extra's)."""
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in _nodes(ast.parse(path.read_text(), str(path)), at_import_time):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:  # `from . import validation` names a module
                yield f"{target}.{alias.name}", node.lineno


def _unit(module: str) -> str:
    """The package-level unit a module belongs to: `whybert_service.models.classifier` →
    `models`; a top-level module is its own unit (`dataplane`)."""
    return module.split(".")[1] if module.count(".") >= 1 else module


SERVICE_MODULES = dict(_modules(SERVICE, "whybert_service"))


def _service_graph() -> dict[str, dict[str, str]]:
    """unit → {imported unit: where}, for imports between the service's own units."""
    graph: dict[str, dict[str, str]] = {}
    for module, path in SERVICE_MODULES.items():
        if module == "whybert_service":
            continue
        edges = graph.setdefault(_unit(module), {})
        for target, line in _imports(module, path):
            owner = target if target in SERVICE_MODULES else target.rsplit(".", 1)[0]
            if owner in SERVICE_MODULES and owner != "whybert_service" and _unit(owner) != _unit(module):
                edges.setdefault(_unit(owner), f"{path.relative_to(ROOT)}:{line}")
    return graph


def test_the_service_has_no_cycles_between_its_packages() -> None:
    graph = _service_graph()
    assert {"grpc", "models", "batching", "explainers", "registry", "compose"} <= set(graph)
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(unit: str) -> None:
        state[unit] = 1
        path.append(unit)
        for nxt, where in graph.get(unit, {}).items():
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                pytest.fail(f"import cycle {' -> '.join(cycle)} (last edge at {where})")
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[unit] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit)


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("models", "batching"),  # the worker runs a classifier; a classifier knows no worker
        ("models", "training"),  # training builds on models, serving never imports training
        ("batching", "explainers"),
        ("explainers", "dataplane"),
        ("dataplane", "grpc"),
    ],
)
def test_layers_import_downwards_only(lower: str, higher: str) -> None:
    edges = _service_graph().get(lower, {})
    assert higher not in edges, f"{lower} imports {higher} at {edges.get(higher)}"


def test_the_transport_stops_at_grpc() -> None:
    """Only `grpc/` speaks gRPC or protobuf messages; below it, plain types and errors."""
    leaks = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for module, path in SERVICE_MODULES.items()
        if not module.startswith("whybert_service.grpc")
        for target, line in _imports(module, path)
        if target.split(".")[0] in ("grpc", "grpc_health", "grpc_status", "grpc_reflection", "google")
        or target.startswith("whybert.v1")
    ]
    assert leaks == []


def test_the_client_never_imports_torch_or_the_service_on_import() -> None:
    """`pip install whybert` has no torch: only an optional extra's function (`to_shap`,
    `whybert serve`) may import the heavy parts, when called."""
    heavy = ("torch", "transformers", "shap", "whybert_service", "captum", "lime", "matplotlib")
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for module, path in _modules(CLIENT, "whybert")
        for target, line in _imports(module, path, at_import_time=True)
        if target.split(".")[0] in heavy
    ]
    assert found == []


def test_the_checker_sees_a_cycle(tmp_path: Path) -> None:
    """The import reader resolves relative imports, so a cycle written with them is seen;
    a lazy import counts as a dependency, not as an import-time one."""
    (tmp_path / "a.py").write_text("from .b import x\n\ndef f():\n    import torch\n")
    assert list(_imports("pkg.a", tmp_path / "a.py")) == [("pkg.b", 1), ("pkg.b.x", 1), ("torch", 4)]
    assert list(_imports("pkg.a", tmp_path / "a.py", at_import_time=True)) == [("pkg.b", 1), ("pkg.b.x", 1)]
    (tmp_path / "__init__.py").write_text("from . import a\n")
    assert ("pkg.a", 1) in list(_imports("pkg", tmp_path / "__init__.py"))

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


# Modules with nothing of their own to test (module → why). Empty today: even the plain
# types carry behaviour (the cache key, the additivity gap). A module that gains behaviour
# leaves this list; generated stubs, `__init__` and `__main__` are never asked for tests.
UNTESTED: dict[str, str] = {}


def _test_stems() -> set[str]:
    return {
        path.stem for layer in ("unit", "integration", "system") for path in (ROOT / "tests" / layer).glob("test_*.py")
    }


def _names_for(module: str, ambiguous: set[str]) -> list[str]:
    """The test-file names that may name a module: `test_<module>` or, its packages joined
    in front, `test_<package>_<module>`; a module name shared by two modules (`cli`) needs
    its package. A file may add a suffix (`test_partition_engine_shap` names partition/engine)."""
    parts = module.split(".")[1:]
    shortest = 1 if parts[-1] not in ambiguous or len(parts) == 1 else 2
    return ["_".join(parts[-n:]) for n in range(shortest, len(parts) + 1)]


def _missing_tests(modules: list[str], stems: set[str]) -> list[str]:
    last = [m.split(".")[-1] for m in modules]
    ambiguous = {name for name in last if last.count(name) > 1}
    return [
        module
        for module in modules
        if not any(
            stem == f"test_{n}" or stem.startswith(f"test_{n}_")
            for n in _names_for(module, ambiguous)
            for stem in stems
        )
    ]


def _service_leaf_modules() -> list[str]:
    """Every module of the service that holds code: packages' `__init__` and `__main__` excluded."""
    return [module for module, path in SERVICE_MODULES.items() if path.name not in ("__init__.py", "__main__.py")]


def test_every_service_module_has_tests_that_name_it() -> None:
    """Each module's own responsibility is tested where a reader looks for it, so a new module
    without tests fails here (name the file tests/<layer>/test_<module>.py)."""
    modules = [m for m in _service_leaf_modules() if m not in UNTESTED]
    missing = _missing_tests(modules, _test_stems())
    if missing:
        last = [m.split(".")[-1] for m in _service_leaf_modules()]
        ambiguous = {name for name in last if last.count(name) > 1}
        wanted = [f"{m} (tests/<layer>/test_{_names_for(m, ambiguous)[0]}.py)" for m in missing]
        pytest.fail("modules of service/whybert_service with no test file that names them: " + ", ".join(wanted))


def test_the_allow_list_names_real_modules() -> None:
    """An allow-list entry for a module that was removed or renamed would hide nothing; drop it."""
    assert set(UNTESTED) <= set(_service_leaf_modules())


def test_a_test_file_names_its_module() -> None:
    """The matcher: a suffix is allowed, an ambiguous module name needs its package, and a
    prefix of another word does not count (`test_lime` does not name `lime_text`)."""
    modules = ["s.cli", "s.training.cli", "s.explainers.partition.engine", "s.explainers.lime_text"]
    assert _missing_tests(modules, {"test_cli", "test_partition_engine_shap", "test_lime"}) == [
        "s.training.cli",
        "s.explainers.lime_text",
    ]
    assert _missing_tests(modules, {"test_cli_process", "test_training_cli", "test_engine", "test_lime_text"}) == []

"""The client as `pip install whybert` gives it: it depends on gRPC, protobuf and numpy
only, and imports, in a fresh interpreter, without the server stack and with nothing but
its declared dependencies."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_client_package_does_not_import_the_server_stack() -> None:
    code = (
        "import sys, whybert, whybert.cli, whybert.render\n"
        "heavy = [m for m in ('torch', 'transformers', 'shap', 'whybert_service') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


CLIENT_DEPENDENCIES = ["googleapis-common-protos", "grpcio", "grpcio-health-checking", "numpy", "protobuf"]


def _name(requirement: str) -> str:
    return re.split(r"[\s;\[<>=!~]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _requires(distribution: str) -> set[str]:
    """What an installed distribution pulls, extras left out."""
    return {_name(r) for r in metadata.requires(distribution) or () if "extra ==" not in r}


def test_client_dependencies_are_grpc_protobuf_numpy_and_protobuf_only_messages() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(_name(dep) for dep in project["dependencies"]) == CLIENT_DEPENDENCIES
    # google.rpc and grpc.health.v1 messages: these two must pull nothing but gRPC and protobuf.
    assert _requires("googleapis-common-protos") <= {"protobuf"}
    assert _requires("grpcio-health-checking") <= {"grpcio", "protobuf"}


def test_the_client_imports_with_only_its_declared_dependencies() -> None:
    """Every other installed package (torch, the server's grpc extras, ...) is made
    unimportable, as after `pip install whybert`; the client must still import and open."""
    allowed, todo = {"whybert"}, list(CLIENT_DEPENDENCIES)
    while todo:
        name = todo.pop()
        if name not in allowed:
            allowed.add(name)
            todo.extend(_requires(name))
    providers = metadata.packages_distributions()
    blocked = {"whybert_service"} | {
        top for top, dists in providers.items() if not {_name(d) for d in dists} & allowed
    }
    code = (
        "import sys\n"
        f"BLOCKED = {sorted(blocked)!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import whybert, whybert.cli, whybert.render, whybert.ui\n"
        "whybert.Client('localhost:1').close()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

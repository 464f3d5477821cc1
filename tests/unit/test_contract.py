"""The .proto contract: stubs in sync, buf STANDARD lint clean, every element documented."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
BUF = shutil.which("buf") or str(ROOT / ".tools/node_modules/.bin/buf")


def test_generated_stubs_match_the_proto() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not Path(BUF).exists(), reason="buf is installed by scripts/test")
def test_buf_standard_lint_is_clean() -> None:
    result = subprocess.run([BUF, "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _descriptor_set(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    from grpc_tools import protoc

    out = tmp_path / "set.bin"
    protos = [str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto")]
    code = protoc.main(
        ["protoc", f"-I{ROOT / 'protos'}", "--include_source_info", f"--descriptor_set_out={out}", *protos]
    )
    assert code == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def test_every_message_field_enum_value_and_rpc_is_documented(tmp_path: Path) -> None:
    undocumented = []
    for file in _descriptor_set(tmp_path).file:
        commented = {
            tuple(loc.path) for loc in file.source_code_info.location if loc.leading_comments.strip()
        }

        def check(path: tuple[int, ...], name: str, commented: set[tuple[int, ...]] = commented,
                  file_name: str = file.name) -> None:
            if path not in commented:
                undocumented.append(f"{file_name}: {name}")

        for i, msg in enumerate(file.message_type):
            check((4, i), msg.name)
            for j, field in enumerate(msg.field):
                check((4, i, 2, j), f"{msg.name}.{field.name}")
        for i, enum in enumerate(file.enum_type):
            check((5, i), enum.name)
            for j, value in enumerate(enum.value):
                check((5, i, 2, j), f"{enum.name}.{value.name}")
        for i, service in enumerate(file.service):
            check((6, i), service.name)
            for j, method in enumerate(service.method):
                check((6, i, 2, j), f"{service.name}.{method.name}")
    assert not undocumented, "add a comment above: " + ", ".join(undocumented)


def test_enums_start_with_unspecified(tmp_path: Path) -> None:
    for file in _descriptor_set(tmp_path).file:
        for enum in file.enum_type:
            assert enum.value[0].number == 0 and enum.value[0].name.endswith("_UNSPECIFIED"), enum.name


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

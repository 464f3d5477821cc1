"""The .proto contract: every message, field, enum value and rpc documented, and enums
start with UNSPECIFIED (buf's lint and the stubs' generator: system/test_contract_tools.py)."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]


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

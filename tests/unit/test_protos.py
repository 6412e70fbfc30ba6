"""The committed generated code matches the .proto files, and the protos keep
the conventions other-language clients rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.api import protogen
from xinhe.v1 import admin_pb2, agent_pb2, common_pb2, jobs_pb2

GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    protogen.generate(tmp_path)
    fresh = sorted(tmp_path.joinpath("xinhe", "v1").iterdir())
    assert fresh, "protoc generated nothing"
    for path in fresh:
        committed = protogen.PROTO_DIR / path.name
        assert committed.exists(), f"{path.name} is not committed: run `make protos`"
        assert committed.read_text() == path.read_text(), (
            f"{path.name} is stale: run `make protos` and commit the result")


@pytest.mark.parametrize("module", [common_pb2, jobs_pb2, admin_pb2, agent_pb2])
def test_every_enum_starts_with_unspecified_zero(module) -> None:
    for enum in module.DESCRIPTOR.enum_types_by_name.values():
        assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), enum.full_name


@pytest.mark.parametrize("module", [common_pb2, jobs_pb2, admin_pb2, agent_pb2])
def test_package_is_xinhe_v1(module) -> None:
    assert module.DESCRIPTOR.package == "xinhe.v1"


def test_every_rpc_and_field_is_documented() -> None:
    for proto in protogen.proto_files():
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("rpc "):
                assert lines[i - 1].strip().startswith("//"), f"{proto.name}: {line.strip()}"

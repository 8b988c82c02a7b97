"""The committed Python under worldmodel/v1/ is exactly what proto/ generates (`python -m worldmodel.proto_gen`)."""

from __future__ import annotations

from pathlib import Path

from worldmodel.proto_gen import ROOT, generate

COMMITTED = ROOT / "worldmodel" / "v1"
GENERATED = ["simulator_pb2.py", "simulator_pb2.pyi", "simulator_pb2_grpc.py"]


def test_generated_code_is_not_stale(tmp_path: Path):
    written = generate(tmp_path)
    assert sorted(p.name for p in written) == GENERATED
    assert sorted(p.name for p in COMMITTED.glob("simulator_pb2*")) == GENERATED
    stale = [p.name for p in written if p.read_bytes() != (COMMITTED / p.name).read_bytes()]
    assert not stale, f"worldmodel/v1/{stale} differ from proto/: run `python -m worldmodel.proto_gen` and commit"


def test_generated_code_describes_the_contract():
    from worldmodel.v1 import simulator_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Simulator"]
    assert service.full_name == "worldmodel.v1.Simulator"
    assert [m.name for m in service.methods] == [
        "ListModels", "CreateSession", "Reset", "Step", "StepStream", "StepMany", "CloseSession",
    ]
    stream = service.methods_by_name["StepStream"]
    assert stream.client_streaming and stream.server_streaming

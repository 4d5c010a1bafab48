"""The committed gRPC code matches graft.proto (regenerate with `make proto`)."""
from __future__ import annotations

from service.proto.generate import ROOT, generate


def test_generated_code_is_fresh(tmp_path):
    generate(tmp_path)
    for name in ("graft_pb2.py", "graft_pb2.pyi", "graft_pb2_grpc.py"):
        fresh = (tmp_path / "service/proto/graft/v1" / name).read_text()
        committed = (ROOT / "service/proto/graft/v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make proto` and commit the result"

"""Regenerate the Python gRPC code from graft.proto (`make proto`).

The generated modules are committed so that images and tools need no protoc; the test
tests/unit/test_proto.py fails when they are stale.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = "service/proto/graft/v1/graft.proto"


def generate(out: Path = ROOT) -> None:
    from grpc_tools import protoc

    code = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}",
                        f"--grpc_python_out={out}", str(ROOT / PROTO)])
    if code != 0:
        sys.exit(f"protoc failed with {code}")


if __name__ == "__main__":
    generate()

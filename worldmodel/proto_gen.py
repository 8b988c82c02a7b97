"""Regenerate worldmodel/v1/ from proto/ (`make proto`, or `python -m worldmodel.proto_gen`).

The generated modules are committed; tests/test_proto.py fails when they are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("worldmodel/v1/simulator.proto")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpcio-tools) on proto/worldmodel/v1/*.proto into out_dir; returns the files written."""
    from grpc_tools import protoc
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(ROOT / "proto" / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    return sorted((out_dir / PROTO.parent).glob("simulator_pb2*"))


def main() -> int:
    written = generate(ROOT)
    for path in written:
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

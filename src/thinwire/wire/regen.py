"""Regenerate thinwire_pb2.py from thinwire.proto (needs grpcio-tools; run `make proto`)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "thinwire.proto"
GENERATED = HERE / "thinwire_pb2.py"


def generate() -> str:
    """Return the text protoc generates for thinwire.proto."""
    from grpc_tools import protoc  # dev dependency, only needed to regenerate

    with tempfile.TemporaryDirectory() as out:
        args = ["protoc", f"-I{HERE}", f"--python_out={out}", str(PROTO)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")
        return (Path(out) / "thinwire_pb2.py").read_text()


def main() -> int:
    GENERATED.write_text(generate())
    print(f"wrote {GENERATED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

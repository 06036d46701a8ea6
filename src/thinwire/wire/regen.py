"""Regenerate thinwire_pb2.py from thinwire.proto with a pinned, old protoc (`make proto`).

Why old: protobuf gencode runs only on runtimes at least as new as itself, and is supported
on runtimes of its own major version and the next one (protobuf.dev/support/
cross-version-runtime-guarantee). Gencode 5.27.2 (grpcio-tools 1.67.1) therefore covers
protobuf 5.28 to 6.x, the range Flower requires, where 7.x gencode would refuse any runtime
older than 7.35. The pinned protoc lives in its own small venv (TOOL_VENV), so the project's
venv may carry any protobuf in range. This file imports only the standard library and
grpc_tools: it runs as a plain script inside that venv.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "thinwire.proto"
GENERATED = HERE / "thinwire_pb2.py"
ROOT = HERE.parents[2]  # the source checkout (regeneration is a developer task)
PROTOC_PIN = "grpcio-tools==1.67.1"  # emits "Protobuf Python Version: 5.27.2"
LOWEST_RUNTIME = "protobuf==5.28.0"  # the bottom of pyproject's range; grpcio-tools accepts it
TOOL_VENV = Path(os.environ.get("THINWIRE_PROTO_VENV", ROOT / "build" / "proto-venv"))
PIP_TIMEOUT = 120


def run_protoc(*args: str) -> None:
    from grpc_tools import protoc  # only needed to regenerate or to check freshness

    if protoc.main(["protoc", f"-I{HERE}", *args, str(PROTO)]) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")


def generate() -> str:
    """The text this interpreter's protoc generates for thinwire.proto."""
    with tempfile.TemporaryDirectory() as out:
        run_protoc(f"--python_out={out}")
        return (Path(out) / "thinwire_pb2.py").read_text()


def compiled_file():  # -> descriptor_pb2.FileDescriptorProto
    """thinwire.proto as protoc parses it, in the form gencode embeds (no json_name), so any
    protoc version can tell whether the committed module is stale."""
    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory() as out:
        path = Path(out) / "set.pb"
        run_protoc(f"--descriptor_set_out={path}")
        fdp = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file[0]
    todo = list(fdp.message_type)
    while todo:
        msg = todo.pop()
        for f in msg.field:
            f.ClearField("json_name")
        todo.extend(msg.nested_type)
    return fdp


def tool_python() -> Path:
    """Python of the venv holding the pinned protoc and the lowest runtime, (re)made with pip
    when missing, half-made or made for other pins (raises CalledProcessError if the package
    index cannot be reached)."""
    python, stamp = TOOL_VENV / "bin" / "python", TOOL_VENV / "pins.txt"
    pins = f"{PROTOC_PIN} {LOWEST_RUNTIME}"
    if stamp.exists() and stamp.read_text() == pins:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(TOOL_VENV)],
                   check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--disable-pip-version-check", *pins.split()],
                   check=True, timeout=PIP_TIMEOUT, stdout=subprocess.DEVNULL)
    stamp.write_text(pins)
    return python


def pinned_generate() -> str:
    """generate() run by the pinned protoc in TOOL_VENV."""
    out = subprocess.run([str(tool_python()), str(Path(__file__).resolve()), "--print"],
                         check=True, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    return out.stdout


def main(argv: list[str]) -> int:
    if "--print" in argv:  # inside the tool venv
        sys.stdout.write(generate())
        return 0
    GENERATED.write_text(pinned_generate())
    print(f"wrote {GENERATED} with {PROTOC_PIN} ({TOOL_VENV})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

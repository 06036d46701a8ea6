"""thinwire's wire module under the lowest protobuf it declares, and the pinned protoc.

Both use the small venv of thinwire.wire.regen (protobuf==5.28.0 + the pinned grpcio-tools,
about 3 MB, made with pip on first use; skipped if the package index cannot be reached).
Deselect with `-m "not protobuf_compat"`.
"""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from thinwire.wire import regen

pytestmark = pytest.mark.protobuf_compat
SRC = Path(__file__).parents[1] / "src"

ROUND_TRIP = """
import sys
sys.path.append(sys.argv[1])  # torch etc. from the test's venv, after the old protobuf
import google.protobuf, torch
from thinwire.codecs import decode, make_codec
from thinwire.wire import Update, parse_update, serialize_update
p = make_codec("topk(ratio=0.5,index=bitmap+zlib)+int8").encode(torch.randn(40), name="w")
u = parse_update(serialize_update(Update(node_id="n", tensors=[p], metrics={"loss": 1.0})))
assert u.metrics == {"loss": 1.0} and torch.equal(decode(u.tensors[0]), decode(p))
from thinwire.wire import control
r = control.ResourceReport("n", gpu_util=50.0, links=[control.LinkBytes("l", 1, 2)])
assert control.parse_resource_report(control.serialize(r)) == r
print(google.protobuf.__version__)
"""


@pytest.fixture(scope="module")
def tool_python() -> Path:
    try:
        return regen.tool_python()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        pytest.skip(f"cannot build the protobuf {regen.LOWEST_RUNTIME} venv at "
                    f"{regen.TOOL_VENV} (is the package index reachable?): {exc}")


def test_wire_round_trips_under_the_lowest_supported_protobuf(tool_python):
    out = subprocess.run([str(tool_python), "-W", "error::UserWarning", "-c", ROUND_TRIP,
                          sysconfig.get_paths()["purelib"]],
                         env={"PYTHONPATH": str(SRC)}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == regen.LOWEST_RUNTIME.split("==")[1]


def test_committed_module_is_what_the_pinned_protoc_generates(tool_python):
    assert regen.pinned_generate() == regen.GENERATED.read_text(), "run `make proto`"

"""Communicators (GRACE split): the dispatcher reads codec abilities, the DDP hook and the FSDP
reduce-scatter share one communicator, error feedback goes through `ErrorFeedback`, and the
layering rules between tasks and runtimes hold.

The numeric checks run in a gloo group of one process (world 1), in this process.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from thinwire.codecs import REGISTRY, ErrorFeedback, build
from thinwire.codecs.base import Codec
from thinwire.collective import comm_hook
from thinwire.collective.communicators import (AllReduce, Gather, Linear, PowerSGD, SharedInt8,
                                               communicator_for)
from thinwire.collective.fsdp import check_fsdp, reduce_scatter
from thinwire.collective.runtime import free_port
from thinwire.collective.state import CommHookState
from thinwire.errors import ConfigError

SRC = Path(__file__).parents[1] / "src" / "thinwire"


# ---- dispatch from declared abilities ------------------------------------------------------
def _codec(**abilities: bool) -> Codec:
    """An unregistered codec with a made-up name: only its abilities can route it."""
    return type("Made", (Codec,), {"name": "made-up", **abilities})()


@pytest.mark.parametrize("abilities, expected", [
    ({"lossy": False, "linear": True}, AllReduce),
    ({"low_rank": True}, PowerSGD),
    ({"shared_scale": True}, SharedInt8),
    ({"linear": True}, Linear),
    ({}, Gather),
])
def test_dispatcher_reads_abilities_not_names(abilities, expected):
    codec = _codec(**abilities)
    if abilities.get("shared_scale"):
        codec.params = build("int8").params  # the shared grid needs num_bits
    assert type(communicator_for(codec)) is expected


@pytest.mark.parametrize("spec, mode, expected", [
    ("none", "shared", AllReduce), ("fp16", "shared", Linear), ("sketch", "shared", Linear),
    ("randomk(ratio=0.1)+fp16", "shared", Linear), ("randomk(ratio=0.1)+int8", "shared", Gather),
    ("int8", "shared", SharedInt8), ("int8", "per-rank", Gather), ("powersgd", "shared", PowerSGD),
    ("topk+int8", "shared", Gather), ("dgc", "shared", Gather), ("laq", "shared", Gather),
])
def test_dispatcher_on_library_codecs(spec, mode, expected):
    assert type(communicator_for(build(spec), mode, 2)) is expected


def test_declared_abilities_of_the_library():
    declared = {attr: {n for n, c in REGISTRY.items() if getattr(c, attr)}
                for attr in ("sparse", "own_feedback", "low_rank", "shared_scale")}
    assert declared == {"sparse": {"topk", "thresholdv", "dgc", "randomk"},
                        "own_feedback": {"dgc", "bbit"}, "low_rank": {"powersgd"},
                        "shared_scale": {"int8"}}


def test_int8_headroom_and_mode_are_checked():
    with pytest.raises(ConfigError, match="world size"):
        communicator_for(build("int8(num_bits=2)"), "shared", 2)
    with pytest.raises(ConfigError, match="int8_mode"):
        communicator_for(build("int8"), "bogus")


# ---- one communicator for DDP and FSDP ----------------------------------------------------
class FakeBucket:
    """What comm_hook reads from a dist.GradBucket."""

    def __init__(self, buf: torch.Tensor, shapes: list[tuple[int, ...]]) -> None:
        self.buf, self.grads, pos = buf, [], 0
        for shape in shapes:
            n = int(torch.tensor(shape).prod())
            self.grads.append(buf[pos:pos + n].view(shape))
            pos += n

    def buffer(self) -> torch.Tensor:
        return self.buf

    def index(self) -> int:
        return 0

    def gradients(self) -> list[torch.Tensor]:
        return self.grads

    def is_last(self) -> bool:
        return True


@pytest.fixture(scope="module")
def group_of_one():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def _state(spec: str, **opts) -> CommHookState:
    return CommHookState(spec, start_iter=0, min_compression_rate=0, **opts)


def test_ddp_hook_and_fsdp_reduce_scatter_call_the_same_communicator(monkeypatch):
    state, calls = _state("topk(ratio=0.1)"), []
    monkeypatch.setattr(type(state.comm), "average",
                        lambda self, *a: calls.append(("ddp", self)) or torch.futures.Future())
    monkeypatch.setattr(type(state.comm), "reduce_scatter",
                        lambda self, *a: calls.append(("fsdp", self)))
    comm_hook(state, FakeBucket(torch.randn(12), [(12,)]))
    reduce_scatter(state, "m0", torch.randn(12), torch.empty(12))
    assert calls == [("ddp", state.comm), ("fsdp", state.comm)]


SAME_PATH = ["none", "fp16", "sketch(rows=3,cols=16,heavy=4)", "randomk(ratio=0.5)", "int8",
             "int8(stochastic=true)", "topk(ratio=0.25)+int8", "laq(bits=4)", "dgc(ratio=0.25)"]


@pytest.mark.parametrize("spec", SAME_PATH)
def test_ddp_and_fsdp_give_the_same_average(group_of_one, spec):
    """World 1: the average is the codec's reconstruction, whichever runtime asks."""
    x = torch.randn(48, generator=torch.Generator().manual_seed(3))
    ddp, fsdp = _state(spec), check_fsdp(_state(spec))
    assert type(ddp.comm) is type(fsdp.comm)
    for _ in range(2):  # stateful codecs: the second step uses their slots
        got = comm_hook(ddp, FakeBucket(x.clone(), [(48,)])).wait()
        out = torch.empty(48)
        reduce_scatter(fsdp, "m0", x.clone(), out)
        assert torch.allclose(got, out, rtol=1e-6, atol=1e-7), spec


def test_powersgd_is_ddp_only():
    state = _state("powersgd")
    with pytest.raises(ConfigError, match="FSDP"):
        check_fsdp(state)
    with pytest.raises(ConfigError, match="FSDP"):
        state.comm.reduce_scatter(state, "m0", torch.zeros(1, 4), torch.zeros(4))


# ---- error feedback through ErrorFeedback --------------------------------------------------
@pytest.fixture
def feedback_calls(monkeypatch):
    calls: list[str] = []
    compensate, absorb = ErrorFeedback.compensate, ErrorFeedback.absorb

    def spy_compensate(self, x, slot):
        calls.append("compensate")
        return compensate(self, x, slot)

    def spy_absorb(self, slot, v, recon):
        calls.append("absorb")
        absorb(self, slot, v, recon)

    monkeypatch.setattr(ErrorFeedback, "compensate", spy_compensate)
    monkeypatch.setattr(ErrorFeedback, "absorb", spy_absorb)
    return calls


@pytest.mark.parametrize("spec", ["int8", "powersgd(rank=1)", "topk(ratio=0.25)", "fp16"])
def test_error_feedback_residual_goes_through_error_feedback(group_of_one, feedback_calls, spec):
    """The residual is x + old residual - what was sent, kept by the library's ErrorFeedback."""
    state = _state(spec, error_feedback=True)
    assert state.feedback is state.encoder.codec and isinstance(state.feedback, ErrorFeedback)
    shapes = [(6, 8), (8,)]
    sent_total, x_total = torch.zeros(56), torch.zeros(56)
    for step in range(3):
        x = torch.randn(56, generator=torch.Generator().manual_seed(step))
        out = comm_hook(state, FakeBucket(x.clone(), shapes)).wait()
        sent_total += out
        x_total += x
        assert feedback_calls[-2:] == ["compensate", "absorb"], feedback_calls
    residual = state.slot("b0")["residual"]
    assert torch.allclose(sent_total + residual, x_total, atol=1e-5)  # telescoping sum
    assert float(residual.norm()) > 0


def test_error_feedback_split_matches_its_roundtrip():
    ef = ErrorFeedback(build("int8"))
    x = torch.randn(32, generator=torch.Generator().manual_seed(0))
    a, b = {"residual": torch.full((32,), 0.01)}, {"residual": torch.full((32,), 0.01)}
    _, recon = ef.roundtrip(x, a)
    v = ef.compensate(x, b)
    ef.absorb(b, v, recon)
    assert torch.equal(a["residual"], b["residual"])


# ---- layering ----------------------------------------------------------------------------
def _imports(package: str) -> set[tuple[str, str]]:
    """(file, absolute module) for every import under src/thinwire/<package>."""
    found = set()
    for path in (SRC / package).rglob("*.py"):
        parts = ["thinwire", *path.relative_to(SRC).with_suffix("").parts][:-1]  # its package
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(str(path), a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = parts[:len(parts) - node.level + 1] if node.level else []
                found.add((str(path), ".".join([*base, node.module or ""]).rstrip(".")))
    return found


@pytest.mark.parametrize("package, forbidden", [
    ("tasks", ("thinwire.collective", "thinwire.run", "thinwire.sim", "thinwire.service")),
    ("collective", ("thinwire.run", "thinwire.sim", "thinwire.service")),
])
def test_layering(package, forbidden):
    bad = sorted((f, m) for f, m in _imports(package) if m.startswith(forbidden))
    assert not bad, bad

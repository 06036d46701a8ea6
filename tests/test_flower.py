"""thinwire inside Flower (flwr>=1.41): the mod, the strategy wrapper, and the example app run
end to end on Flower's in-memory grid and simulation runtime (thinwire.flower.inprocess: the
ClientApps run in this process instead of Ray actors, each message and Context through
Flower's serde)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import (ArrayRecord, ConfigRecord, Context, Message, MessageType,  # noqa: E402
                      MetricRecord, RecordDict)
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common.constant import SUPERLINK_NODE_ID  # noqa: E402
from flwr.common.serde import context_from_proto, context_to_proto  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from thinwire.exchange import decode_update  # noqa: E402
from thinwire.flower import DownlinkMismatch, ThinwireStrategy, run_inprocess, thinwire_mod  # noqa: E402
from thinwire.flower.records import STATE_KEY, read_blob_record  # noqa: E402
from thinwire.wire import parse_update  # noqa: E402
from thinwire.wire.state import decode_state  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower"
TOPK = "topk(ratio=0.01)+int8"
NODE = 7


@pytest.fixture(autouse=True)
def task_identity():
    """Flower reads the process's task identity when a Message is built."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(200, 250, generator=gen), "b": torch.randn(250, generator=gen)}


def train_message(record: ArrayRecord, rnd: int, extra: dict | None = None) -> Message:
    content = RecordDict({"arrays": record, "config": ConfigRecord({"server-round": rnd})})
    for key, value in (extra or {}).items():
        content[key] = value
    msg = Message(content=content, dst_node_id=NODE, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = f"m{rnd}"
    return msg


def client(step: dict[str, torch.Tensor], codec: str | None = TOPK) -> ClientApp:
    """A ClientApp whose training adds `step` to the weights it received."""
    app = ClientApp(mods=[thinwire_mod(codec)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        got = msg.content["arrays"].to_torch_state_dict()
        out = ArrayRecord({n: t + step[n] for n, t in got.items()})
        return Message(RecordDict({"arrays": out, "metrics": MetricRecord({"num-examples": 10})}),
                       reply_to=msg)

    return app


def node_context() -> Context:
    return Context(run_id=1, node_id=NODE, node_config={}, state=RecordDict(), run_config={})


def through_serde(context: Context) -> Context:
    return context_from_proto(context_to_proto(context))


def test_error_feedback_lives_in_the_context_across_rounds():
    """Sum of true updates = sum of what was sent + the residual in Context.state, with the
    Context serialized between rounds as a SuperNode stores it."""
    step = {n: t * 0.01 for n, t in weights(1).items()}
    context, sent = node_context(), {n: torch.zeros_like(t) for n, t in step.items()}
    start = ArrayRecord(weights(0))
    for rnd in range(1, 4):
        reply = client(step)(train_message(start, rnd), context)  # a new app each round too
        context = through_serde(context)
        blob, raw = read_blob_record(reply.content["arrays"])
        assert not raw and list(reply.content["metrics"].keys()) == ["num-examples"]
        update = parse_update(blob)
        assert update.round == rnd and update.kind == "delta" and update.num_samples == 10
        for n, t in decode_update(update).params.items():
            sent[n] += t
    state = decode_state(context.state[STATE_KEY]["blob"])
    slots = state["senders"]["arrays"]["encoder"]["slots"]
    for n, t in step.items():
        residual = slots[n]["residual"]
        assert float(residual.abs().sum()) > 0
        torch.testing.assert_close(sent[n] + residual, 3 * t, atol=1e-5, rtol=1e-5)


def test_strategy_decodes_replies_and_refuses_another_codec():
    strategy = ThinwireStrategy(FedAvg(), codec=TOPK)
    start = weights(0)
    (msg,) = strategy.outgoing(1, [train_message(ArrayRecord(start), 1)])
    step = {n: torch.zeros_like(t) for n, t in start.items()}
    step["w"][3, 4] = 0.5
    reply = client(step)(msg, node_context())
    reply.metadata.__dict__["_src_node_id"] = NODE
    (decoded,) = strategy.incoming(1, [reply])
    got = decoded.content["arrays"].to_torch_state_dict()
    torch.testing.assert_close(got["w"], start["w"] + step["w"], atol=0.01, rtol=0)
    stats = strategy.rounds[1]
    assert stats["plain_up"] > 20 * stats["bytes_up"]
    # the same reply encoded by `bin` is refused: left out, counted, the node forgotten
    other = ThinwireStrategy(FedAvg(), codec="bin")
    (msg,) = other.outgoing(1, [train_message(ArrayRecord(start), 1)])
    reply = client(step)(msg, node_context())
    reply.metadata.__dict__["_src_node_id"] = NODE
    assert other.incoming(1, [reply]) == [] and other.rounds[1]["rejected"] == 1


def test_downlink_sends_full_then_deltas_and_a_node_without_the_replica_errs():
    strategy = ThinwireStrategy(FedAvg(), codec=TOPK, down="topk(ratio=0.1)+int8")
    context, step = node_context(), {n: torch.zeros_like(t) for n, t in weights(0).items()}
    app = client(step)
    models = [weights(0), {n: t + 0.01 for n, t in weights(0).items()}]
    sizes = []
    for rnd, model in enumerate(models, 1):
        (msg,) = strategy.outgoing(rnd, [train_message(ArrayRecord(model), rnd)])
        sizes.append(strategy.rounds[rnd]["bytes_down"])
        fresh = Message(msg.content, dst_node_id=NODE, message_type=MessageType.TRAIN)
        reply = app(msg, context)
        context = through_serde(context)
        reply.metadata.__dict__["_src_node_id"] = NODE
        strategy.incoming(rnd, [reply])
    assert sizes[1] * 5 < sizes[0]  # round 1: the full model; round 2: a delta
    replica = decode_state(context.state[STATE_KEY]["blob"])["replicas"]["arrays"]
    # the node's replica is the server's, bit for bit
    held = strategy.replicas[int(replica["version"])].tensors
    for n in held:
        assert torch.equal(replica["tensors"][n], held[n])
    with pytest.raises(Exception) as err:  # a node that never got round 1's model
        client(step)(fresh, node_context())
    assert isinstance(err.value, DownlinkMismatch) or "DownlinkMismatch" in repr(err.value)


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(EXAMPLE))
    try:
        import client_app
        import server_app
        yield client_app.app, server_app.app
    finally:
        sys.path.remove(str(EXAMPLE))


def run_example(example, codec: str, down: str = "off", rounds: int = 12) -> dict:
    client_app, server_app = example
    context = run_inprocess(server_app, client_app, 4, app_dir=EXAMPLE, run_config={
        "num-server-rounds": rounds, "thinwire-codec": codec, "thinwire-down": down})
    return {k: list(v) for k, v in context.state["thinwire-rounds"].items()}


def test_flower_app_bytes_fall_by_the_codec_ratio_and_accuracy_holds(example):
    """The example app (4 nodes, embedded digits, MLP 784-64-10) on Flower's simulation
    runtime: plain FedAvg vs the same app with thinwire on the uplink."""
    plain = run_example(example, "off")
    assert plain["bytes-up"] == plain["plain-up"]  # nothing coded, nothing added
    acc = {"plain": sum(plain["accuracy"][-3:]) / 3}
    for codec, low, high in [(TOPK, 50, 200), ("bin", 20, 33)]:
        run = run_example(example, codec)
        ratio = sum(plain["bytes-up"]) / sum(run["bytes-up"])
        assert low < ratio < high, (codec, ratio)
        assert abs(sum(run["plain-up"]) / sum(plain["bytes-up"]) - 1) < 1e-3
        assert abs(sum(run["bytes-down"]) / sum(plain["bytes-down"]) - 1) < 1e-3
        acc[codec] = sum(run["accuracy"][-3:]) / 3
    assert acc["plain"] > 0.88, acc
    assert all(acc["plain"] - a < 0.04 for a in acc.values()), acc  # 1,000 test digits


def test_flower_app_compressed_downlink(example):
    run = run_example(example, TOPK, down="topk(ratio=0.05)+int8", rounds=6)
    down = run["bytes-down"]
    assert abs(down[0] / run["plain-down"][0] - 1) < 0.01  # round 1: the full model
    assert all(d * 15 < p for d, p in zip(down[1:], run["plain-down"][1:]))
    assert run["accuracy"][-1] > 0.8


def test_example_is_a_valid_flower_app():
    """What `flwr run` checks first: pyproject fields, components that load, the run config."""
    import tomllib

    from flwr.common.config import validate_config

    config = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(config, check_module=True, project_dir=EXAMPLE)
    assert ok, errors

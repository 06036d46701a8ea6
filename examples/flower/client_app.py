"""ClientApp: local SGD on this node's shard; the thinwire mod compresses what it sends.

The mod reads the codec from the run config (`thinwire-codec`; "off" sends plain Flower
messages), keeps the error-feedback residual in this node's Context, and rebuilds a
compressed downlink into plain weights before `train` sees the message.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from task import evaluate, make_model, shard, train
from thinwire.flower import thinwire_mod

app = ClientApp(mods=[thinwire_mod()])


def _setup(msg: Message, context: Context):
    cfg = context.run_config
    model = make_model(int(cfg.get("hidden", 64)))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    pid, parts = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    x, y = shard(pid, parts, str(cfg.get("data-dir", "")), int(cfg.get("seed", 0)))
    return cfg, model, pid, x, y


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    cfg, model, pid, x, y = _setup(msg, context)
    rnd = int(msg.content["config"].get("server-round", 0))
    loss = train(model, x, y, int(cfg.get("local-epochs", 1)), float(cfg.get("lr", 0.05)),
                 int(cfg.get("batch-size", 32)), seed=1000 * rnd + pid)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train-loss": loss, "num-examples": len(x)})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    _, model, _, x, y = _setup(msg, context)
    loss, acc = evaluate(model, x, y)
    content = RecordDict({"metrics": MetricRecord({"eval-loss": loss, "eval-acc": acc,
                                                   "num-examples": len(x)})})
    return Message(content=content, reply_to=msg)

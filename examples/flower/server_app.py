"""ServerApp: FedAvg wrapped in ThinwireStrategy, centralized accuracy on the test set.

The wrapper decodes thinwire replies before FedAvg averages them, optionally compresses the
downlink (`thinwire-down`), and counts Flower's own message bytes per round. The per-round
figures land in the ServerApp Context (`context.state["thinwire-rounds"]`, a MetricRecord of
lists) and, when `results-file` is set, in a JSON file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from task import dataset, evaluate, make_model
from thinwire.flower import ThinwireStrategy

app = ServerApp()
OFF = ("", "off", "plain")


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    torch.manual_seed(int(cfg.get("seed", 0)))
    model = make_model(int(cfg.get("hidden", 64)))
    codec = str(cfg.get("thinwire-codec", ""))
    down = str(cfg.get("thinwire-down", ""))
    fraction_evaluate = float(cfg.get("fraction-evaluate", 0.0))
    nodes = int(cfg.get("min-nodes", 2))
    strategy = ThinwireStrategy(
        FedAvg(fraction_train=float(cfg.get("fraction-train", 1.0)),
               fraction_evaluate=fraction_evaluate, min_train_nodes=nodes,
               min_evaluate_nodes=nodes if fraction_evaluate else 0, min_available_nodes=nodes),
        codec=None if codec in OFF else codec, down=None if down in OFF else down)
    task = dataset(str(cfg.get("data-dir", "")))
    accuracy: dict[int, float] = {}

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate(model, task.test_x, task.test_y)
        accuracy[server_round] = acc
        return MetricRecord({"accuracy": acc, "loss": loss})

    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                   num_rounds=int(cfg.get("num-server-rounds", 10)),
                   train_config=ConfigRecord({}), evaluate_fn=central)
    rounds = sorted(strategy.rounds)
    table = {"round": rounds, "accuracy": [accuracy.get(r, 0.0) for r in rounds]}
    for key in ("bytes_up", "bytes_down", "plain_up", "plain_down"):
        table[key.replace("_", "-")] = [strategy.rounds[r][key] for r in rounds]
    context.state["thinwire-rounds"] = MetricRecord(table)
    if cfg.get("results-file"):
        Path(str(cfg["results-file"])).write_text(json.dumps(
            {"codec": codec or "plain", "down": down or "plain", "rounds": table,
             "totals": strategy.totals()}, indent=1))

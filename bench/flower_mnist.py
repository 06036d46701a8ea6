"""Flower FedAvg vs Flower + thinwire on MNIST: Flower's own message bytes and accuracy.

Runs the example app (examples/flower: MLP 784-64-10, IID shards, 1 local epoch of SGD per
round, centralized test accuracy) once per mode on Flower's in-memory grid and simulation
runtime (thinwire.flower.run_inprocess: no Ray), and prints a markdown table plus JSON.

    .venv/bin/python bench/flower_mnist.py --data-dir ../shared/data/mnist --rounds 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower"
MODES = {  # name: (uplink codec, error feedback, downlink codec)
    "fedavg": ("off", True, "off"),
    "topk+int8 ef": ("topk(ratio=0.01)+int8", True, "off"),
    "bin": ("bin", False, "off"),
    "topk+int8 ef + down topk(0.05)+int8": ("topk(ratio=0.01)+int8", True,
                                           "topk(ratio=0.05)+int8"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="", help="MNIST IDX folder ('' = embedded digits)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: "
                        + "; ".join(MODES))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(EXAMPLE))
    import client_app
    import server_app

    from thinwire.flower import run_inprocess

    rows = []
    for name in args.modes.split(","):
        codec, feedback, down = MODES[name]
        start = time.perf_counter()
        context = run_inprocess(server_app.app, client_app.app, args.nodes, app_dir=EXAMPLE,
                                run_config={"num-server-rounds": args.rounds, "lr": args.lr,
                                            "data-dir": args.data_dir, "min-nodes": args.nodes,
                                            "thinwire-codec": codec, "thinwire-down": down,
                                            "thinwire-error-feedback": feedback})
        table = {k: list(v) for k, v in context.state["thinwire-rounds"].items()}
        rows.append({"mode": name, "codec": codec, "error_feedback": feedback, "down": down,
                     "seconds": round(time.perf_counter() - start, 1), **table})
        print(f"{name}: {rows[-1]['seconds']} s, accuracy {table['accuracy'][-1]:.4f}",
              file=sys.stderr, flush=True)

    base = rows[0]
    print("| mode | up MB | down MB | up x fewer | total x fewer | final acc | best acc | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        up, down = sum(row["bytes-up"]), sum(row["bytes-down"])
        total_base = sum(base["bytes-up"]) + sum(base["bytes-down"])
        print(f"| {row['mode']} | {up / 1e6:.3f} | {down / 1e6:.3f} | "
              f"{sum(base['bytes-up']) / up:.1f} | {total_base / (up + down):.2f} | "
              f"{100 * row['accuracy'][-1]:.2f}% | {100 * max(row['accuracy']):.2f}% | "
              f"{row['seconds']} |")
    print(json.dumps(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

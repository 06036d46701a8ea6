"""FLQ uploaded bits to reach a target test accuracy, per mode (fedavg, laq8, bbit, bin).

    python bench/flq_bits.py --data-dir ../shared/data/mnist [--target 0.97] [--json]

Runs the coordinator's round logic (`thinwire.service.core.Coordinator`) and the workers'
round (`thinwire.service.round_trip.worker_round`, the HTTP worker's own loop) in one process
over a `LocalLink` instead of HTTP: every upload is still a
serialized protobuf `Update` that the coordinator parses, validates, decodes and journals,
so the counted bits are exactly what would cross the wire. 10 workers, dirichlet:0.5 split,
mnist_cnn. Accuracy is checked after every round on a 2,000-image test subset and, once that
is within 0.5 points of the target, on the full 10,000-image test set; a mode reaches the
target at the first round whose full-test accuracy is >= target.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from thinwire.service.config import load_config
from thinwire.service.core import Coordinator
from thinwire.service.learner import Learner
from thinwire.tasks.evaluate import evaluate
from thinwire.service.round_trip import LocalLink, load_model, worker_round
from thinwire.tasks import Task, build_model, load_task, split_indices

MODES = {"fedavg": {}, "laq8": {}, "bbit": {"b_up": 4}, "bin": {}}


def one_round(co: Coordinator, learners: list[Learner]) -> None:
    """Every worker pulls before any answers, as parallel workers would: the round waits
    only for workers that pulled it."""
    links = [LocalLink(co, lr.worker_id) for lr in learners]
    infos = [load_model(lr, link, None, None)[0] for lr, link in zip(learners, links)]
    for lr, link, info in zip(learners, links, infos):
        worker_round(lr, link, info, co.round + 1, sync=True, selection=False,
                     local_steps=co.cfg.local_steps, seconds=0.0)


def accuracy(model: torch.nn.Module, co: Coordinator, sub: Task) -> float:
    model.load_state_dict(co.params, strict=False)
    return evaluate(model, sub)[0]


def run_mode(mode: str, args: argparse.Namespace, task: Task, sub: Task, log) -> dict:
    over = {"mode": mode, "total_workers": args.workers, "max_rounds": args.max_rounds,
            "split": args.split, "local_steps": args.local_steps, "batch_size": args.batch_size,
            "lr": args.lr, "thr_scale": args.thr_scale, "eval_every": 1 << 30,
            "round_timeout": 1e9,  # workers run one after another here: no deadline
            "task": "mnist", "data_dir": str(args.data_dir), **MODES[mode]}
    cfg = load_config(None, over)
    parts = split_indices(task.train_y, args.workers, args.split, cfg.seed)
    with tempfile.TemporaryDirectory(prefix=f"flq-bits-{mode}-") as state:
        co = Coordinator(cfg, state, task=task)
        learners = []
        for i in range(args.workers):
            info = co.register(f"worker-{i}", "s")
            learners.append(Learner(task, parts[info["index"]], info["index"], info["config"],
                                    f"worker-{i}"))
        model = build_model("mnist_cnn", 10, task.in_shape)
        start, reached, curve = time.monotonic(), None, []
        while not co.done and time.monotonic() - start < args.time_cap:
            one_round(co, learners)
            quick = accuracy(model, co, sub)
            full = evaluate(model, task)[0] if quick >= args.target - 0.005 else None
            t = co.ledger.totals()
            point = {"round": co.round, "acc_subset": round(quick, 4), "acc_full": full,
                     "bits_up": 8 * t["up_wire"], "uploads": t["sent"], "skipped": t["skipped"]}
            curve.append(point)
            log(f"{mode} {json.dumps(point)}")
            if full is not None and full >= args.target:
                reached = point
                break
        co.close()
    last = curve[-1]
    return {"mode": mode, "codec": cfg.upload_codec(), "lazy": cfg.is_lazy(),
            "thr_scale": cfg.thr_scale if cfg.is_lazy() else None,
            "reached": reached is not None, "rounds": last["round"],
            "bits_up": last["bits_up"], "uploads": last["uploads"],
            "skipped": last["skipped"], "acc": last["acc_full"] or last["acc_subset"],
            "wall_s": round(time.monotonic() - start, 1), "curve": curve}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/mnist"))
    p.add_argument("--modes", default="fedavg,laq8,bbit,bin")
    p.add_argument("--target", type=float, default=0.97)
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--split", default="dirichlet:0.5")
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--thr-scale", type=float, default=5.0, help="lazy modes (bbit, bin)")
    p.add_argument("--max-rounds", type=int, default=80)
    p.add_argument("--time-cap", type=float, default=600.0, help="seconds per mode")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="append per-mode JSON lines here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    task = load_task("mnist", args.data_dir)
    sub = Task("mnist-sub", task.train_x[:0], task.train_y[:0], task.test_x[:2000],
               task.test_y[:2000], 10, task.in_shape, task.model)

    def log(line: str) -> None:
        print(line, flush=True)

    results = []
    for mode in args.modes.split(","):
        res = run_mode(mode, args, task, sub, log)
        results.append(res)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(res) + "\n")
    base = next((r for r in results if r["mode"] == "fedavg"), None)
    print("mode    codec                              lazy  reached  rounds  uploads  "
          "skipped  Mbit up  x fewer than fedavg")
    for r in results:
        ratio = base["bits_up"] / r["bits_up"] if base and base["reached"] and r["reached"] \
            else None
        r["ratio_vs_fedavg"] = ratio
        print(f"{r['mode']:7s} {r['codec']:34s} {str(r['lazy']):5s} {str(r['reached']):8s} "
              f"{r['rounds']:6d} {r['uploads']:8d} {r['skipped']:8d} "
              f"{r['bits_up'] / 1e6:8.1f}  {f'{ratio:.1f}' if ratio else '-'}")
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "curve"} for r in results]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

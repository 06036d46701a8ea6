"""thinwire: train PyTorch models together over thin links.

User mistakes print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import ThinwireError, run_main

RUN_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--task", {"help": "mnist | cifar10 | synthetic (default mnist)"}),
    ("--data-dir", {"type": Path, "help": "dataset folder; default: embedded 5k MNIST digits"}),
    ("--download", {"action": "store_true", "default": None, "help": "fetch the dataset"}),
    ("--model", {"help": "mnist_cnn | mlp | resnet_cifar (default: the task's)"}),
    ("--nodes", {"type": int, "help": "number of nodes (default 4)"}),
    ("--split", {"help": "iid | dirichlet:ALPHA | shards:K (default iid)"}),
    ("--mode", {"help": "sync (data-parallel SGD) | fedavg (local steps + deltas)"}),
    ("--local-steps", {"type": int, "help": "fedavg local steps per round (default 5)"}),
    ("--error-feedback", {"action": "store_true", "default": None,
                          "help": "wrap lossy codecs in error feedback"}),
    ("--down-codec", {"help": "codec for the aggregator's broadcast (default none)"}),
    ("--policy", {"help": "always | every:K | trigger | laq (default always)"}),
    ("--skipped", {"help": "reuse | drop | accumulate: what happens to a skipped update "
                           "(accumulate: the node sends it later, added to the next)"}),
    ("--weight", {"help": "samples | uniform | confidence"}),
    ("--epochs", {"type": int}), ("--batch-size", {"type": int, "help": "per node"}),
    ("--lr", {"type": float}), ("--momentum", {"type": float}), ("--seed", {"type": int}),
    ("--lr-schedule", {"help": "constant (default) | step (x lr_gamma at lr_milestones, "
                               "default the last epoch) | cosine"}),
    ("--lr-warmup", {"type": int, "help": "steps of linear lr warm-up (default 0)"}),
    ("--pack", {"action": "store_true", "default": None,
                "help": "send all tensors as one flat payload (global top-k, less metadata)"}),
    ("--threads", {"type": int, "help": "torch intra-op threads (default: torch's)"}),
    ("--bandwidth", {"help": "per-node link, e.g. 10gbit (default), 100mbit, or a list"}),
    ("--downlink", {"help": "downlink bandwidth if different"}),
    ("--latency-ms", {"type": float}),
    ("--topology", {"help": "star | ring"}),
    ("--out", {"type": Path, "help": "output folder (default runs/)"}),
    ("--checkpoint-every", {"type": int, "help": "epochs between checkpoints (default 5)"}),
    ("--resume", {"action": "store_true", "default": None}),
    ("--max-steps", {"type": int}),
    ("--run-name", {}),
]


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, help="YAML/JSON config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. communication.sync_interval=3")
    for flag, kwargs in RUN_FLAGS:
        p.add_argument(flag, **kwargs)
    p.add_argument("--json", action="store_true", help="print result rows as JSON lines")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    names = [f[2:].replace("-", "_") for f, _ in RUN_FLAGS]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one simulated experiment")
    add_run_flags(run)
    run.add_argument("--codec", help="codec spec, e.g. 'topk(ratio=0.01)+int8'")
    run.add_argument("--centralized", action="store_true", default=None,
                     help="one node, all data, no communication (the baseline)")
    cmp = sub.add_parser("compare", help="several codecs/policies x seeds, table and plots")
    add_run_flags(cmp)
    cmp.add_argument("--codecs", default="none,int8",
                     help="comma list; commas inside parentheses belong to the codec")
    cmp.add_argument("--policies", default="always", help="comma list of policies")
    cmp.add_argument("--seeds", default="0", help="comma list, e.g. 0,1,2")
    cmp.add_argument("--centralized", action="store_true", help="add the centralized baseline")
    demo = sub.add_parser("demo", help="the main job: 4-node MNIST compare (a few minutes)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--epochs", type=int, default=None)
    demo.add_argument("--data-dir", type=Path, default=None)
    demo.add_argument("--json", action="store_true")
    demo.add_argument("--no-progress", action="store_true")
    sub.add_parser("codecs", help="list codecs: what each sends, bytes/element, properties")
    for name, help_text in PASSTHROUGH_HELP.items():
        sp = sub.add_parser(name, help=help_text, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
    bench = sub.add_parser("bench", help="benchmarks")
    bench.add_argument("what", choices=["codecs"])
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="--numel N --json ...")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from .sim.config import build_config
    from .sim.experiment import run_experiment

    flags = flags_of(args)
    for key in ("codec", "centralized"):
        if getattr(args, key) is not None:
            flags[key] = getattr(args, key)
    cfg = build_config(args.config, flags, args.set)
    row = run_experiment(cfg, progress=not args.no_progress)
    if args.json:
        print(json.dumps({k: v for k, v in row.items() if k != "history"}))
    else:
        from .obs.results import summary_table

        print(summary_table([row]))
        print(f"results: {cfg.out / 'results.jsonl'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .codecs.spec import split_top_level
    from .sim.compare import plan, run_compare
    from .sim.config import build_config

    base = build_config(args.config, flags_of(args), args.set).model_dump(
        exclude={"codec", "policy", "seed", "centralized"})
    codecs = [c.strip() for c in split_top_level(args.codecs, ",") if c.strip()]
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ThinwireError(f"--seeds {args.seeds!r}: use a comma list of integers") from None
    configs = plan(base, codecs, policies, seeds, args.centralized)
    run_compare(configs, Path(base["out"]), args.json, not args.no_progress)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .sim.demo import demo

    return demo(args.out, args.epochs, args.data_dir, args.json, not args.no_progress)


def cmd_codecs(args: argparse.Namespace) -> int:
    from .codecs.table import codec_table

    print(codec_table())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .obs.codec_bench import main as bench_main

    return bench_main(args.rest)


# Runtimes with their own argument parsers: `thinwire NAME --help` shows their flags.
PASSTHROUGH = {
    "coordinator": ("thinwire.service.cli", "coordinator_main"),
    "worker": ("thinwire.service.cli", "worker_main"),
    "quick-test": ("thinwire.service.cli", "quick_test_main"),
    "train-lm": ("thinwire.collective.train_lm", "main"),
    "validate": ("thinwire.collective.validate", "validate_main"),
    "generate": ("thinwire.collective.generate", "generate_main"),
    "report": ("thinwire.collective.report", "report_main"),
}
PASSTHROUGH_HELP = {
    "coordinator": "FLQ coordinator (HTTP service)",
    "worker": "FLQ worker that trains and pushes updates to a coordinator",
    "quick-test": "coordinator + workers on 127.0.0.1, N rounds, summary table",
    "train-lm": "GPT-2 LM training with compressed DDP/FSDP hooks (use torchrun for >1 rank)",
    "validate": "validation loss and perplexity of a saved LM",
    "generate": "sample text from a saved LM",
    "report": "table and plots from collective results.jsonl files",
}


def cmd_passthrough(args: argparse.Namespace) -> int:
    import importlib

    module, func = PASSTHROUGH[args.command]
    return int(getattr(importlib.import_module(module), func)(args.rest) or 0)


COMMANDS = {"run": cmd_run, "compare": cmd_compare, "demo": cmd_demo, "codecs": cmd_codecs,
            "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:  # their own parsers handle every flag, --help too
        args = argparse.Namespace(command=argv[0], rest=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    handler = cmd_passthrough if args.command in PASSTHROUGH else COMMANDS[args.command]
    return run_main(lambda _: handler(args))


if __name__ == "__main__":
    sys.exit(main())

"""thinwire: train PyTorch models together over thin links.

User mistakes print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import add_command_flags, config_flags
from .errors import ThinwireError, needs, run_main
from .obs.dashboard import add_dashboard_flag, open_dashboard
from .obs.results import result_text

# Every config key of the simulator is a flag (generated from RunConfig). compare sweeps
# codecs (--codecs) and adds the baseline itself (--centralized); --policy and --seed are
# what --policies and --seeds default to.
COMPARE_OWN = ("codec", "centralized")


def add_run_flags(p: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    from .sim.config import RunConfig

    add_dashboard_flag(p)
    add_command_flags(p, RunConfig, exclude)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one simulated experiment")
    add_run_flags(run)
    cmp = sub.add_parser("compare", help="several codecs/policies x seeds, table and plots")
    add_run_flags(cmp, COMPARE_OWN)
    cmp.add_argument("--codecs", default="none,int8",
                     help="comma list; commas inside parentheses belong to the codec")
    cmp.add_argument("--policies", help="comma list of policies (default: the policy key)")
    cmp.add_argument("--seeds", help="comma list, e.g. 0,1,2 (default: the seed key)")
    cmp.add_argument("--centralized", action="store_true", help="add the centralized baseline")
    sweep = sub.add_parser("sweep", help="codecs x policies x seeds grid, finished runs "
                           "reused; Pareto front PNG and bytes-to-target table")
    add_run_flags(sweep, ("codec",))
    from .sim.sweep import add_grid_flags

    add_grid_flags(sweep)
    demo = sub.add_parser("demo", help="the main job: 4-node MNIST compare (a few minutes)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--epochs", type=int, default=None)
    demo.add_argument("--data-dir", type=Path, default=None)
    demo.add_argument("--json", action="store_true")
    demo.add_argument("--no-progress", action="store_true")
    add_dashboard_flag(demo)
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

    cfg = build_config(args.config, config_flags(args), args.set)
    with open_dashboard(args.dashboard, [cfg.out / cfg.name()]):
        row = run_experiment(cfg, progress=not args.no_progress)
    print(result_text(row, cfg.out, args.json))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .codecs.spec import split_top_level
    from .sim.compare import plan, run_compare
    from .sim.config import build_config

    cfg = build_config(args.config, config_flags(args), args.set)
    base = cfg.explicit({"codec", "policy", "seed", "centralized"})  # per-codec defaults
    codecs = [c.strip() for c in split_top_level(args.codecs, ",") if c.strip()]
    policies = [p.strip() for p in (args.policies or cfg.policy).split(",") if p.strip()]
    try:
        seeds = [int(s) for s in (args.seeds or str(cfg.seed)).split(",")]
    except ValueError:
        raise ThinwireError(f"--seeds {args.seeds!r}: use a comma list of integers") from None
    configs = plan(base, codecs, policies, seeds, args.centralized)
    with open_dashboard(args.dashboard, [c.out / c.name() for c in configs]):
        run_compare(configs, cfg.out, args.json, not args.no_progress)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sim.sweep import plan_sweep, run_sweep

    grid = {k: getattr(args, k) for k in ("codecs", "policies", "seeds", "target")}
    configs, target = plan_sweep(args.config, config_flags(args), args.set, grid)
    with open_dashboard(args.dashboard, [c.out / c.name() for c in configs]):
        run_sweep(configs, configs[0].out, target, args.json, not args.no_progress)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .sim.demo import demo, demo_configs

    configs = demo_configs(args.out, args.epochs, args.data_dir)
    with open_dashboard(args.dashboard, [c.out / c.name() for c in configs]):
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
    "swarm": ("thinwire.swarm.cli", "swarm_main"),
    "peer": ("thinwire.swarm.cli", "peer_main"),
    "dashboard": ("thinwire.obs.dashboard", "dashboard_main"),
    "gateway": ("thinwire.experts.tool", "gateway_main"),
}
# A command shared by two runtimes goes to the other one when one of these flags is given:
# `coordinator --experts`, `worker --specialty/--dataset` (the seed's federated-experts
# worker; the FLQ worker is `python -m thinwire.service.worker` for its --specialty label),
# `generate --coordinator-url` (route and answer; without it, a saved collective LM).
ALTERNATES = {
    "coordinator": (("--experts",), ("thinwire.experts.app", "coordinator_main")),
    "worker": (("--experts", "--specialty", "--dataset"),
               ("thinwire.experts.worker", "worker_main")),
    "generate": (("--coordinator-url",), ("thinwire.experts.generate", "generate_main")),
}
# the pip extra that a runtime's commands need (pyproject's optional-dependencies)
EXTRAS = {"thinwire.service": "service", "thinwire.collective": "lm", "thinwire.swarm": "swarm",
          "thinwire.obs.dashboard": "dashboard", "thinwire.experts": "experts",
          "thinwire.flower": "flower"}
PASSTHROUGH_HELP = {
    "coordinator": "FLQ coordinator (HTTP service); --experts: federated-experts coordinator",
    "worker": "FLQ worker; with --specialty/--dataset a federated-experts worker",
    "quick-test": "coordinator + workers on 127.0.0.1, N rounds, summary table",
    "train-lm": "GPT-2 LM training with compressed DDP/FSDP hooks (use torchrun for >1 rank)",
    "validate": "validation loss and perplexity of a saved LM",
    "generate": "sample text from a saved LM; --coordinator-url: ask the routed expert",
    "report": "table and plots from collective results.jsonl files",
    "swarm": "peers as OS processes over ZeroMQ (ipc or tcp), every run flag; same table/row",
    "peer": "one swarm peer (--id I --peers tcp://h0:p0,...), for runs over several machines",
    "dashboard": "live web page of running and finished runs (thinwire dashboard runs/)",
    "gateway": "federated experts: the merged gateway model (info, --save-gateway, --export-hf)",
}


def cmd_passthrough(args: argparse.Namespace) -> int:
    import importlib

    module, func = target(args.command, args.rest)
    extra = next((e for prefix, e in EXTRAS.items() if module.startswith(prefix)), None)
    with needs(extra, f"thinwire {args.command}"):  # a missing extra: one line, exit 2
        return int(getattr(importlib.import_module(module), func)(args.rest) or 0)


def target(command: str, rest: list[str]) -> tuple[str, str]:
    """(module, function) that handles `command` with these arguments."""
    flags, alternate = ALTERNATES.get(command, ((), None))
    given = {a.split("=", 1)[0] for a in rest if a.startswith("--")}
    return alternate if alternate and given & set(flags) else PASSTHROUGH[command]


COMMANDS = {"run": cmd_run, "compare": cmd_compare, "sweep": cmd_sweep, "demo": cmd_demo,
            "codecs": cmd_codecs, "bench": cmd_bench}


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

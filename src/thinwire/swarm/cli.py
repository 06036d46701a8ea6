"""`thinwire swarm` (peers as processes on this machine) and `thinwire peer` (one peer, for
runs over several machines). Both take every `thinwire run` flag (generated from the config).

    thinwire swarm --nodes 4 --transport tcp --epochs 3 --dashboard 3000
    thinwire swarm --nodes 12 --exchange gossip --gossip-fanout 2
    thinwire peer --id 1 --peers tcp://h0:5555,tcp://h1:5555 -c swarm.json
"""

from __future__ import annotations

import argparse
import sys

from ..config import add_command_flags, config_flags
from ..errors import ConfigError, require, run_main
from ..obs.dashboard import add_dashboard_flag, open_dashboard
from ..obs.results import result_text
from .config import SwarmConfig, build_config


def swarm_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thinwire swarm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dashboard_flag(p)
    add_command_flags(p, SwarmConfig)
    return p


def peer_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thinwire peer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--id", type=int, required=True, help="this peer's index in --peers")
    p.add_argument("--peers", required=True, help="every peer's address, comma separated "
                   "(tcp://host:port or ipc:///path), the same list on every peer")
    add_command_flags(p, SwarmConfig)
    return p


def swarm(argv: list[str] | None) -> int:
    from .launch import launch

    args = swarm_parser().parse_args(argv)
    for module in ("zmq", "safetensors"):  # the peers import them: one line here, not N
        require(module, "swarm", "thinwire swarm")
    cfg = build_config(args.config, config_flags(args), args.set)
    with open_dashboard(args.dashboard, [cfg.out / cfg.name()]):
        row = launch(cfg, echo=not args.no_progress)
    sockets = (f"bytes: ledger {row['bytes_wire_total'] + row['bytes_control']} "
               f"(wire {row['bytes_wire_total']}, control {row['bytes_control']}), "
               f"sockets {row['bytes_socket_total']}; " + agreement(row))
    print(result_text(row, cfg.out, args.json, sockets))
    return 0


def agreement(row: dict) -> str:
    if row["models_agree"] is not None:
        return f"models agree: {row['models_agree']}"
    accs = ", ".join(f"{n} {100 * a:.2f}%" for n, a in row["peer_test_accuracy"].items())
    return f"gossip: models differ by design; accuracy is {row['accuracy_of']}'s ({accs})"


def peer(argv: list[str] | None) -> int:
    from .peer import Peer

    args = peer_parser().parse_args(argv)
    addresses = [a.strip() for a in args.peers.split(",") if a.strip()]
    flags = {"nodes": len(addresses), **config_flags(args)}
    cfg = build_config(args.config, flags, args.set)
    if cfg.nodes != len(addresses) or not 0 <= args.id < cfg.nodes:
        raise ConfigError(f"--id {args.id} with {len(addresses)} --peers and nodes={cfg.nodes}: "
                          "give one address per node and an id below that count")
    Peer(cfg, args.id, addresses).run()
    return 0


def swarm_main(argv: list[str] | None = None) -> int:
    return run_main(swarm, argv)


def peer_main(argv: list[str] | None = None) -> int:
    return run_main(peer, argv)


if __name__ == "__main__":  # the launcher starts peers as `python -m thinwire.swarm.cli peer`
    command, rest = sys.argv[1], sys.argv[2:]
    sys.exit({"swarm": swarm_main, "peer": peer_main}[command](rest))

"""`thinwire gateway`: inspect and fetch the merged gateway model (seed 003's
get_gateway_model.py).

    thinwire gateway --coordinator-url http://10.0.0.1:5000 [--token T]
        [--save-gateway gateway_model.npz | gateway.safetensors] [--list-experts]
        [--export-hf DIR]

Prints the gateway's version, merge method and weights, parameter count and the experts it
merges (with their versions). --save-gateway writes its weights (a tied embedding once);
--export-hf writes a folder `transformers.AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .client import CoordinatorClient


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thinwire gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coordinator-url", default="http://127.0.0.1:5000")
    p.add_argument("--token", default=os.environ.get("THINWIRE_TOKEN"))
    p.add_argument("--save-gateway", type=Path, metavar="FILE",
                   help="write the weights: .npz or .safetensors")
    p.add_argument("--list-experts", action="store_true", help="one line per expert")
    p.add_argument("--export-hf", type=Path, metavar="DIR",
                   help="write a transformers model folder (with the tokenizer)")
    return p


def describe(info: dict[str, Any]) -> list[str]:
    weights = ", ".join(f"{n}={w:.3g}" for n, w in info["weights"].items()) or "-"
    experts = ", ".join(f"{n} v{v}" for n, v in info["experts"].items()) or "none yet"
    method = info["method"] + (f" (density {info['ties_density']})"
                               if info.get("ties_density") else "")
    return [f"gateway version {info['version']}",
            f"merge: {method}, weights by {info['weights_by']}: {weights}, "
            f"scale {info['scale']}",
            f"parameters: {info['parameters']:,}",
            f"experts: {experts}"]


def expert_lines(status: dict[str, Any]) -> list[str]:
    lines = []
    for name, e in status["experts"].items():
        workers = [w["id"] for w in status["workers"] if w["specialty"] == name]
        per = e["bytes_per_upload"]
        lines.append(f"  {name}: version {e['version']}, {e['samples']} samples, "
                     f"{e['uploads']} uploads" + (f" ({per:,.0f} bytes each)" if per else "")
                     + f", workers {', '.join(workers)}")
    if status.get("upload_ratio"):
        lines.append(f"  uploads are {status['upload_ratio']:,.0f}x smaller than the full "
                     f"model in fp32 ({status['full_model_bytes']:,} bytes)")
    return lines


def gateway_main(argv: list[str] | None = None) -> int:
    from ..errors import ConfigError
    from ..tasks.lm.weights import SUFFIXES

    args = build_parser().parse_args(argv)
    if args.save_gateway and args.save_gateway.suffix not in SUFFIXES:
        raise ConfigError(f"--save-gateway {args.save_gateway}: use a .npz or .safetensors "
                          "file name")
    client = CoordinatorClient(args.coordinator_url, args.token)
    try:
        for line in describe(client.json("/v1/gateway")):
            print(line)
        if args.list_experts:
            print("experts:")
            for line in expert_lines(client.json("/v1/status")):
                print(line)
        if args.save_gateway:
            save(client, args.save_gateway)
        if args.export_hf:
            from ..tasks.lm.weights import export_hf

            model, tok, version = client.model("gateway")
            export_hf(model, tok, args.export_hf)
            print(f"exported gateway v{version} to {args.export_hf} (transformers folder)")
    finally:
        client.close()
    return 0


def save(client: CoordinatorClient, path: Path) -> None:
    from ..tasks.lm.weights import save_weights

    tensors, version = client.weights("gateway")
    save_weights(tensors, path, {"kind": "gateway", "version": str(version)})
    size = path.stat().st_size
    print(f"saved gateway v{version} to {path} ({len(tensors)} tensors, {size / 1e6:.1f} MB)")


if __name__ == "__main__":
    from ..errors import run_main

    sys.exit(run_main(gateway_main))

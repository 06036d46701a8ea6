"""Command-line flags of train_lm (the design's underscore spellings are accepted too)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError

# (flags, kwargs): the first flag names the attribute; '_' spellings are added automatically.
FLAGS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--data", "--data-path"), {"type": Path, "required": True,
                                 "help": "plain text file or JSON array of {id,title,text}"}),
    (("--out", "--output-dir"), {"type": Path, "default": Path("runs/collective"),
                                 "help": "output folder: results.jsonl, logs/, checkpoints/"}),
    (("--comm-compress",), {"default": "none",
                            "help": "codec spec, e.g. 'topk(ratio=0.01)+int8'; none = no hook"}),
    (("--comm-config-json",), {"default": None,
                               "help": "JSON object of extra parameters for the first stage"}),
    (("--error-feedback",), {"action": "store_true", "help": "error feedback per bucket"}),
    (("--fsdp",), {"action": "store_true", "help": "shard with FSDP instead of DDP"}),
    (("--fsdp-version",), {"type": int, "choices": [1, 2], "default": 2,
                           "help": "2: fully_shard + set_custom_reduce_scatter; 1: "
                                   "FullyShardedDataParallel + register_comm_hook"}),
    (("--profile",), {"action": "store_true", "help": "torch.profiler trace + summary"}),
    (("--profile-steps",), {"type": int, "default": 3}),
    (("--max-steps",), {"type": int, "default": 200}),
    (("--seed",), {"type": int, "default": 0}),
    (("--model",), {"default": "10m", "help": "tiny | 10m | 62m"}),
    (("--max-length",), {"type": int, "default": 128, "help": "tokens per sequence"}),
    (("--batch-size",), {"type": int, "default": 8, "help": "sequences per rank per step"}),
    (("--optimizer",), {"choices": ["adamw", "sgd"], "default": "adamw",
                        "help": "sgd = SGD with --momentum (the setting error feedback assumes)"}),
    (("--lr",), {"type": float, "default": 1e-3}),
    (("--momentum",), {"type": float, "default": 0.9, "help": "sgd only"}),
    (("--weight-decay",), {"type": float, "default": 0.01}),
    (("--lr-warmup",), {"type": int, "default": 20, "help": "linear LR warm-up steps"}),
    (("--grad-clip",), {"type": float, "default": 1.0, "help": "0 disables"}),
    (("--warmup-steps",), {"type": int, "default": 5,
                           "help": "steps excluded from the timing statistics"}),
    (("--start-iter",), {"type": int, "default": 1,
                         "help": "uncompressed iterations first (DDP rebuilds buckets after 0)"}),
    (("--min-compression-rate",), {"type": float, "default": 2.0,
                                   "help": "compress a bucket/matrix only if it shrinks this much"}),
    (("--int8-mode",), {"choices": ["shared", "per-rank"], "default": "shared",
                        "help": "int8: shared scale + int8 sum, or per-rank scales + gather"}),
    (("--grad-error-every",), {"type": int, "default": 10,
                               "help": "sample grad_rel_error/cos_sim every K steps (0: never)"}),
    (("--eval-every",), {"type": int, "default": 0,
                         "help": "validate every N steps (default: 25 with --target-ppl)"}),
    (("--eval-batches",), {"type": int, "default": 0, "help": "0 = the whole validation split"}),
    (("--val-fraction",), {"type": float, "default": 0.05}),
    (("--target-ppl",), {"type": float, "default": None,
                         "help": "record time_to_target_ppl_s for this validation PPL"}),
    (("--tokenizer",), {"type": Path, "default": None,
                        "help": "tokenizer folder or tokenizer.json (default: train a BPE)"}),
    (("--vocab-size",), {"type": int, "default": 8192}),
    (("--cache-dir",), {"type": Path, "default": None, "help": "default <out>/cache"}),
    (("--run-name",), {"default": None}),
    (("--no-save",), {"action": "store_true", "help": "skip the final checkpoint"}),
    (("--threads",), {"type": int, "default": 0, "help": "torch threads per rank (0: auto)"}),
    (("--backend",), {"choices": ["auto", "gloo", "nccl"], "default": "auto"}),
    (("--monitor-every",), {"type": float, "default": 1.0,
                            "help": "seconds between each rank's resource samples in "
                                    "logs/<run>/events.jsonl (0: off)"}),
    (("--dashboard",), {"default": None, "metavar": "[HOST:]PORT",
                        "help": "rank 0 serves the live dashboard (thinwire dashboard)"}),
    (("--bucket-cap-mb",), {"type": float, "default": 25.0, "help": "DDP bucket size"}),
    (("--outer-steps",), {"type": int, "default": 0,
                          "help": "DiLoCo: H local optimizer steps per rank with no gradient "
                                  "all-reduce, then the pseudo-gradient is averaged through "
                                  "--comm-compress and an outer Nesterov step applied (0: off, "
                                  "per-step DDP)"}),
    (("--outer-lr",), {"type": float, "default": 0.7, "help": "outer step size (DiLoCo: 0.7)"}),
    (("--outer-momentum",), {"type": float, "default": 0.9,
                             "help": "outer Nesterov momentum (DiLoCo: 0.9; 0: plain)"}),
    (("--hook-baseline",), {"action": "store_true",
                            "help": "register the thinwire hook for 'none' too (per-op timing)"}),
]


def build_parser(prog: str = "thinwire.collective.train_lm") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="GPT-2 LM training on torch.distributed "
                                "with compressed gradient communication")
    for flags, kwargs in FLAGS:
        names = list(flags)
        for f in flags:
            under = "--" + f[2:].replace("-", "_")
            if under != f and under not in names:
                names.append(under)
        p.add_argument(*names, dest=flags[0][2:].replace("-", "_"), **kwargs)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.comm_config = parse_config_json(args.comm_config_json)
    if args.eval_every == 0 and args.target_ppl is not None:
        args.eval_every = 25
    for name in ("max_steps", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if args.outer_steps < 0:
        raise ConfigError("--outer-steps must be >= 0 (0: per-step DDP)")
    if args.outer_steps and args.fsdp:
        raise ConfigError("--outer-steps runs each rank on a whole model copy; drop --fsdp")
    if not 0 <= args.val_fraction < 1:
        raise ConfigError("--val-fraction must be in [0, 1)")
    from ..codecs import build

    build(args.comm_compress, args.comm_config)  # a bad spec fails now, not after tokenizing
    if not Path(args.data).is_file():
        raise ConfigError(f"--data {args.data} is not a file")
    return args


def parse_config_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--comm-config-json is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--comm-config-json must be a JSON object, got {text!r}")
    return value
